"""Add a catalogue page (the body lives in mildnet/ui/add_page.py)."""

from mildnet.ui import add_page, layout

layout.run_page(add_page.render, needs_dataset=False)
