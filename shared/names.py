"""Names shared by the code, the function bindings, the tests and the Bicep template.

Queue names are literal here because the Functions host reads them from the bindings at indexing time;
tests assert that function_app.py's bindings, these constants and infra/main.bicep agree.
"""

# Blob container holding run artifacts (manifests, batches, results, reports): <export>/runs/<runId>/...
# Everything in it may expire (RUN_RETENTION_DAYS / a storage lifecycle rule on the whole container).
RUNS_CONTAINER = "exporter-runs"
# Blob container holding each export's membership state (<export>/members.bin). Kept apart from the runs so that
# a lifecycle rule expiring run artifacts can never match it; it must never expire.
STATE_CONTAINER = "exporter-state"
# The brand's Omnisend request budget, shared by every instance and run (shared/budget.py): two times and a rate,
# updated with an ETag condition. In the state container because it must never expire with the run artifacts.
BUDGET_BLOB = "_budget/omnisend-requests.json"
# Blob container for the export definitions in Azure (EXPORTS_CONFIG=blob:exporter-config/exports.json).
CONFIG_CONTAINER = "exporter-config"
# Prefix of EXPORTS_CONFIG values that name a blob ("blob:<container>/<name>") instead of a local file.
BLOB_CONFIG_PREFIX = "blob:"

# Storage queues, one per stage. The host moves a message that failed maxDequeueCount times to
# "<queue>-poison"; a handler on each poison queue records the failure so the run still finalises.
PLAN_QUEUE = "export-plan"
SEND_QUEUE = "export-send"
VERIFY_QUEUE = "export-verify"
# Finalising in steps: one message per untag chunk (≤ 250 leavers) and "finalise" nudges (shared/pipeline/finalise.py).
FINALISE_QUEUE = "export-finalise"
STAGE_QUEUES = (PLAN_QUEUE, SEND_QUEUE, VERIFY_QUEUE, FINALISE_QUEUE)
POISON_SUFFIX = "-poison"

# Connection-setting prefix the queue bindings use (identity-based in Azure: AzureWebJobsStorage__*).
STORAGE_CONNECTION = "AzureWebJobsStorage"
