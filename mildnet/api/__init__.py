"""The HTTP API (FastAPI) over already-opened search engines; ``python -m mildnet serve`` starts it.

``server``  create_app(engines, settings) -> FastAPI app; Settings (upload and k limits, API keys, how a
            catalogue is re-read on reload); load_api_keys (``$MILDNET_API_KEYS`` and a key file)

Imported on use only: FastAPI and uvicorn are needed by the server, not by the rest of the package.
"""
