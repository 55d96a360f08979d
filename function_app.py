"""Azure Functions entry point: triggers only. The product lives in shared/."""

import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
