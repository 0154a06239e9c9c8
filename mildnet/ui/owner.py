"""Who may change the shop: the owner (add and remove catalogues, train, publish, evaluate) or a shopper
(searches the published catalogue).

How the owner is recognised, in order of what the deployment configured:

1. **Sign-in through Streamlit** (``st.login``): an ``[auth]`` section in ``.streamlit/secrets.toml`` (OIDC).
   The signed-in user is the owner; ``owner_emails`` under ``[mildnet]`` in the secrets limits it to those.
2. **A password**: ``owner_password`` under ``[mildnet]`` in the secrets, or ``$MILDNET_OWNER_PASSWORD``; the
   sidebar's "Owner sign-in" asks for it once per session.
3. **Nothing configured**: the owner is whoever opens the app in a browser on the server itself (a loopback
   connection that no proxy forwarded); every other visitor is a shopper.
"""

from __future__ import annotations

import hmac
import os

import streamlit as st

OWNER_KEY = "mn_owner_signed_in"
PASSWORD_ENV = "MILDNET_OWNER_PASSWORD"
# A proxy in front of the app connects from the same machine; these say whom it forwards.
_FORWARDED = ("x-forwarded-for", "forwarded", "x-real-ip")


def _secrets() -> dict:
    try:
        section = st.secrets.get("mildnet", {})
        auth = "auth" in st.secrets
    except Exception:  # noqa: BLE001 - no secrets file at all (the usual case) raises here, in many forms
        return {"_auth": False}
    return {**dict(section), "_auth": auth}


def mode() -> str:
    """``"oidc"``, ``"password"`` or ``"local"`` (see the module docstring)."""
    secrets = _secrets()
    if secrets.get("_auth"):
        return "oidc"
    if _password():
        return "password"
    return "local"


def _password() -> str:
    return str(_secrets().get("owner_password") or os.environ.get(PASSWORD_ENV, "")).strip()


def is_owner() -> bool:
    how = mode()
    if how == "oidc":
        if not getattr(st.user, "is_logged_in", False):
            return False
        allowed = [e.lower() for e in _secrets().get("owner_emails", []) or []]
        return not allowed or str(getattr(st.user, "email", "")).lower() in allowed
    if how == "password":
        return st.session_state.get(OWNER_KEY) is True
    return _local_browser()


def _local_browser() -> bool:
    # Streamlit reports a loopback connection as None and any other as its address (a string; AppTest's stand-in
    # runtime answers with a mock, which is no address).
    if isinstance(st.context.ip_address, str):
        return False
    headers = {k.lower() for k in (st.context.headers or {}).keys()}
    return not headers & set(_FORWARDED)


def sign_in_box() -> None:
    """The sidebar's owner sign-in (or sign-out); nothing in local mode, where being on the server is the key."""
    how = mode()
    if how == "local":
        if not is_owner():
            st.caption("Shop owner? Open the app on its server, or set an owner password (README).")
        return
    with st.expander("Owner sign-in" if not is_owner() else "Signed in as owner", icon=":material/lock:"):
        if how == "oidc":
            if is_owner():
                st.button("Sign out", key="mn_owner_logout", on_click=st.logout)
            elif getattr(st.user, "is_logged_in", False):
                st.caption("This account is not one of the shop's owners.")
                st.button("Sign out", key="mn_owner_logout", on_click=st.logout)
            else:
                st.button("Sign in", key="mn_owner_login", on_click=st.login)
            return
        if is_owner():
            st.button("Sign out", key="mn_owner_signout", on_click=lambda: st.session_state.pop(OWNER_KEY, None))
            return
        with st.form("mn_owner_form", border=False):
            given = st.text_input("Owner password", type="password", key="mn_owner_password")
            submitted = st.form_submit_button("Sign in", key="mn_owner_go")
        if submitted:
            if hmac.compare_digest(given.encode("utf-8"), _password().encode("utf-8")):
                st.session_state[OWNER_KEY] = True
                st.rerun()
            st.error("Wrong password.")


def owner_only(what: str) -> bool:
    """Whether to go on drawing an owner's page; a shopper is told why not."""
    if is_owner():
        return True
    st.info(f"Only the shop's owner can {what}.", icon=":material/lock:")
    return False
