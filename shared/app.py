"""Wiring: build the stage Context from Settings. Used by the CLI and by function_app.py alike."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable

from shared import brands, names
from shared.budget import AzureBudgetBlob, BudgetPacer, RequestBudget
from shared.connections import DEFAULT_CONNECTION, IMPLICIT_DEFAULT, Connection
from shared.errors import ConfigError
from shared.exports import Definitions, ExportDefinition, load_definitions, load_definitions_file
from shared.omnisend import DEFAULT_MAX_ATTEMPTS, OmnisendClient, Pacer
from shared.omnisend.client import ApiKeyProvider
from shared.pipeline import Context
from shared.settings import Settings
from shared.stopping import StopSignal
from shared.storage import NotFound, ObjectStore


def make_stores(settings: Settings) -> tuple[ObjectStore, ObjectStore]:
    """(run-state store, snapshot store): a local folder, or Blob Storage when the storage settings are set."""
    from shared.storage_blob import make_object_stores  # azure SDK imports only when needed

    return make_object_stores(settings)


def make_key_provider(settings: Settings, connection: Connection = IMPLICIT_DEFAULT) -> ApiKeyProvider:
    """The key of ``connection`` (by default the app settings' own key): shared/brands.py."""
    return brands.key_provider(settings, connection)


def build_context(
    settings: Settings,
    *,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    requests_per_minute: float | None = None,
    key_provider: ApiKeyProvider | None = None,
    stores: tuple[ObjectStore, ObjectStore] | None = None,
    stop: StopSignal | None = None,
    pacer: Pacer | BudgetPacer | None = None,
    connection: Connection = IMPLICIT_DEFAULT,
) -> Context:
    """A Context whose client talks to ``connection``'s brand (by default the app settings' one) with its key, API
    version and request share. ``pacer``: how the client paces its requests. By default the connection's whole
    requestsPerMinute (or OMNISEND_REQUESTS_PER_MINUTE, or ``requests_per_minute``) is this process's (the CLI);
    the Functions app passes a BudgetPacer shared by every instance through the brand's budget blob. ``stop``: the
    CLI run's stop flag (Ctrl-C, fatal errors); the pacer's waits end early when it is set."""
    state_store, source_store = stores or make_stores(settings)
    lock = threading.Lock()
    provider_holder: list[ApiKeyProvider] = [key_provider] if key_provider else []
    brand = brands.brand(settings, connection)

    def client_factory() -> OmnisendClient:
        with lock:
            if not provider_holder:
                provider_holder.append(make_key_provider(settings, connection))
        rpm = requests_per_minute or brand.requests_per_minute
        return OmnisendClient(
            base_url=settings.omnisend_base_url,
            api_version=brand.api_version,
            api_key=provider_holder[0],
            pacer=pacer or (Pacer(rpm, sleep=stop.sleep) if stop is not None else Pacer(rpm)),
            max_attempts=max_attempts,
            stop=stop,
        )

    return Context(settings=settings, state_store=state_store, source_store=source_store,
                   client_factory=client_factory, connection=connection)


def load_export_definitions(settings: Settings, state_store: ObjectStore | None = None) -> list[ExportDefinition]:
    """From EXPORTS_CONFIG: a local file path, or ``blob:<container>/<name>`` read from the object store."""
    return load_definitions_from_settings(settings, state_store).exports


def definitions_blob(settings: Settings) -> tuple[str, str] | None:
    """(container, name) when EXPORTS_CONFIG names a blob (``blob:<container>/<name>``), None for a local file."""
    where = settings.exports_config
    if not where.startswith(names.BLOB_CONFIG_PREFIX):
        return None
    container, _, name = where[len(names.BLOB_CONFIG_PREFIX):].partition("/")
    if not container or not name:
        raise ConfigError(f"EXPORTS_CONFIG={where!r}: use blob:<container>/<path>, e.g. "
                          f"blob:{names.CONFIG_CONTAINER}/exports.json", source="environment")
    return container, name


def load_definitions_from_settings(settings: Settings, state_store: ObjectStore | None = None) -> Definitions:
    """The whole definitions document (connections and exports) that EXPORTS_CONFIG names."""
    blob = definitions_blob(settings)
    if blob is not None:
        container, name = blob
        if state_store is None:
            state_store, _ = make_stores(settings)
        try:
            text = state_store.read(container, name).decode("utf-8")
        except NotFound:
            raise ConfigError(
                f"no export definitions at {state_store.describe(container, name)}: upload exports.json there "
                "or point EXPORTS_CONFIG elsewhere", source="EXPORTS_CONFIG") from None
        return load_definitions(text, source=state_store.describe(container, name))
    return load_definitions_file(settings.exports_config)


# Export definitions are re-read at most this often by a function instance: edits take effect within a
# minute without a restart, and a burst of queue messages does not read the blob once per message.
EXPORTS_CACHE_SECONDS = 60.0


def build_orchestrator(settings: Settings | None = None, queues=None, stores=None, key_provider=None, clock=None,
                       budget: RequestBudget | None = None,
                       make_budget: Callable[[Connection, int], RequestBudget] | None = None,
                       **orchestrator_options):
    """The Functions app's orchestrator: Blob state, Storage queues, and per connection (Omnisend brand) a client
    that never sleeps on a 429 (max_attempts=1: the message is re-enqueued with a delay instead), paced by that
    brand's one request budget (shared/budget.py; its blob is named by shared/brands.py). ``key_provider`` and
    ``budget`` replace the "default" connection's (tests); ``make_budget(connection, requests per minute)`` makes
    every other connection's (by default a reservation blob in the run-state account)."""
    import time

    from shared.orchestrator import Orchestrator

    settings = settings or Settings.from_env()
    stores = stores or make_stores(settings)
    if make_budget is None and settings.uses_azure_storage:
        def make_budget(connection: Connection, rpm: int) -> RequestBudget:
            blob = AzureBudgetBlob.from_settings(settings, name=brands.budget_blob_name(connection))
            return RequestBudget(blob, rpm)

    def build_brand(connection: Connection) -> tuple[Context, BudgetPacer | None]:
        default = connection.name == DEFAULT_CONNECTION
        rpm = brands.brand(settings, connection).requests_per_minute
        brand_budget = budget if default and budget is not None else (
            make_budget(connection, rpm) if make_budget is not None else None)
        pacer = BudgetPacer(brand_budget) if brand_budget is not None else None
        brand_ctx = build_context(settings, max_attempts=1, key_provider=key_provider if default else None,
                                  stores=stores, pacer=pacer, connection=connection)
        if clock is not None:
            brand_ctx.clock = clock
        return brand_ctx, pacer

    registry = brands.Brands(build_brand)
    ctx, pacer = registry.get(IMPLICIT_DEFAULT)
    if queues is None:
        from shared.queues import StageQueues

        queues = StageQueues.from_settings(settings)
    return Orchestrator(ctx, queues, CachedDefinitions(settings, ctx.state_store, time.monotonic), pacer=pacer,
                        brand_of=lambda export: registry.get(export.resolved_connection), **orchestrator_options)


class CachedDefinitions:
    """The export definitions, re-read at most every EXPORTS_CACHE_SECONDS; ``forget()`` after this instance
    changed them (the management API) so it sees its own change at once. Other instances see it within the
    cache time."""

    def __init__(self, settings: Settings, state_store: ObjectStore, monotonic) -> None:
        self.settings, self.state_store, self.monotonic = settings, state_store, monotonic
        self._cache: dict[str, object] = {}

    def __call__(self) -> list[ExportDefinition]:
        cache = self._cache
        if "at" not in cache or self.monotonic() - cache["at"] > EXPORTS_CACHE_SECONDS:
            cache["exports"] = load_export_definitions(self.settings, self.state_store)
            cache["at"] = self.monotonic()
        return cache["exports"]

    def forget(self) -> None:
        self._cache.clear()


def to_json(obj: object) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False)
