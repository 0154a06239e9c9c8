"""Evaluation page (the body lives in mildnet/ui/evaluation_page.py)."""

from mildnet.ui import layout, evaluation_page

layout.run_page(evaluation_page.render)
