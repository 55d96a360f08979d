"""Customer Insights segment → Omnisend exporter: the product.

Triggers (function_app.py) and the CLI (``python -m shared``) are thin layers over this package.
Nothing here imports function_app.py, and nothing here except ``settings.py`` reads ``os.environ``.
"""

__version__ = "0.1.0"
