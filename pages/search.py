"""Search page (the body lives in mildnet/ui/search_page.py)."""

from mildnet.ui import layout, search_page

layout.run_page(search_page.render)
