"""Evaluation page (the body lives in mildnet/ui/evaluation_page.py)."""

from mildnet.ui import evaluation_page, layout, navigation

navigation.ensure_entrypoint()  # a deep link on a fresh server runs this file without app.py
layout.run_page(evaluation_page.render, hero=evaluation_page.HERO)
