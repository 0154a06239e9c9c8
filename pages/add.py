"""Add a catalogue page (the body lives in mildnet/ui/add_page.py)."""

from mildnet.ui import add_page, layout, navigation

navigation.ensure_entrypoint()  # a deep link on a fresh server runs this file without app.py
layout.run_page(add_page.render, needs_dataset=False, hero=add_page.HERO)
