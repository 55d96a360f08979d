"""The management API: who may do what (access), the definitions document edited over HTTP (definitions), the
audit log of every change (audit), and the request handlers function_app.py calls (api). docs/exports.md."""
