"""The composition root: the one place that builds the engines, the history store, the search
and the per-persona apps from `Settings` and wires them together (`create_app`); every other
module receives what it needs. `chatbot serve` (cli.py) starts what it returns."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from contextlib import asynccontextmanager
from importlib.resources import files
from pathlib import Path

from fastapi import Depends, FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Mount, Route
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocketClose

from chatbot import __version__
from chatbot.api.auth import KeyGuard, KeyMetrics, install_api_keys, require_api_key
from chatbot.api.chat_completions import router as chat_completions
from chatbot.api.deps import PersonaRuntime
from chatbot.api.docs_pages import offline_docs
from chatbot.api.errors import install_error_handlers
from chatbot.api.metrics import PersonaMetrics
from chatbot.api.middleware import BodyLimitMiddleware, MetricsMiddleware, RequestIdMiddleware
from chatbot.api.playground import playground
from chatbot.api.routes import character, common, office
from chatbot.core.admission_queue import AdmissionQueue
from chatbot.core.chat import ChatService
from chatbot.core.chat_completions import ChatCompletions
from chatbot.core.performance import performance_report
from chatbot.core.ports import ChatEngine, HistoryStore, NoWebSearch, WebSearch
from chatbot.core.prompts import OfficeAssistant
from chatbot.core.shutdown import Shutdown
from chatbot.core.stats import Outcome, PerformanceStats
from chatbot.domain.personas import GPT_MODELS, GPT_SAMPLING, PROFILES, Persona
from chatbot.llm.bundled import bundled_model_path
from chatbot.settings import Settings
from chatbot.stores.embedded import EmbeddedHistoryStore
from chatbot.stores.journal import JournaledHistoryStore
from chatbot_contract import NOT_FOUND_HEALTH_PATH

log = logging.getLogger(__name__)

NOT_FOUND_PAGE = files("chatbot.api").joinpath("static/404.html").read_text(encoding="utf-8")

# At shutdown, how long requests cut off (by the service's Shutdown, or by uvicorn's own
# timeout as a backstop) get to count themselves before the final counters are logged.
SETTLE_S = 2.0

_TITLES = {Persona.OFFICE: "ChatBot AI — office", Persona.CHARACTER: "ChatBot AI — character"}


def model_file(settings: Settings, persona: Persona) -> Path:
    """The persona's configured GGUF, or the bundled SmolLM2."""
    return settings.model_path(persona) or bundled_model_path()


class Engines:
    """The engines of the served personas, each loaded and closed once (two personas on
    one model file share one engine)."""

    def __init__(self, by_persona: Mapping[Persona, ChatEngine]) -> None:
        self.by_persona = dict(by_persona)
        self._distinct = list({id(e): e for e in self.by_persona.values()}.values())

    @classmethod
    def from_settings(cls, settings: Settings, personas: list[Persona]) -> Engines:
        """One engine per distinct model file. The batched engine gets one sequence per slot
        of every persona on its file (`n_seq_max` = the sum of their `max_concurrent`), so
        each admitted request decodes at once; the model settings are the first persona's.
        """
        by_path: dict[Path, list[Persona]] = {}
        for persona in personas:
            by_path.setdefault(model_file(settings, persona).resolve(), []).append(persona)
        by_persona = {}
        for path, sharing in by_path.items():
            model = settings.persona(sharing[0]).model
            if settings.engine == "batched":
                from chatbot.llm.batched_engine import BatchedEngine

                n_seq = sum(settings.persona(p).max_concurrent for p in sharing)
                engine = BatchedEngine(path, model, n_seq, settings.model_wait_timeout_s)
            else:
                from chatbot.llm.llama_engine import LlamaEngine

                engine = LlamaEngine(path, model, settings.model_wait_timeout_s)
            by_persona.update(dict.fromkeys(sharing, engine))
        return cls(by_persona)

    async def load_all(self) -> None:
        for engine in self._distinct:  # one at a time: llama.cpp's log hook is global
            await engine.load()

    async def close(self) -> None:
        for engine in self._distinct:
            await engine.close()


def build_store(settings: Settings) -> HistoryStore:
    """MongoDB when `MONGO_URL` is set, else the embedded SQLite store (same semantics);
    either behind the pod's journal, which keeps the turns the store cannot take."""
    store: HistoryStore
    if settings.mongo_url is not None:
        from chatbot.stores.mongo import MongoHistoryStore

        store = MongoHistoryStore(settings.mongo_url.get_secret_value(),
                                  settings.mongo_database, settings.mongo_timeout_s)
    else:
        store = EmbeddedHistoryStore(settings.history_path)
    return JournaledHistoryStore(store, settings.journal_path(),
                                 max_turns=settings.history_journal_max_turns,
                                 flush_on_close_s=settings.history_journal_flush_s)


def build_search(settings: Settings) -> WebSearch:
    if settings.search == "ddgs":
        from chatbot.search.ddgs_search import DdgsSearch

        return DdgsSearch(settings.search_timeout_s)
    if settings.search == "recorded":  # offline: recorded results (demos, tests)
        from chatbot.search.recorded import RecordedSearch

        return RecordedSearch(settings.search_recorded_path)
    return NoWebSearch()


def build_api_keys(settings: Settings) -> KeyGuard | None:
    """The keys file and the budgets its keys spend (shared in MongoDB when the installation
    has one), or None without `CHATBOT_API_KEYS_FILE`: every route open."""
    if settings.api_keys_file is None:
        return None
    from chatbot.core.budgets import Budgets
    from chatbot.stores.api_keys_file import KeysFile

    store = None
    if settings.mongo_url is not None:
        from chatbot.stores.usage_mongo import MongoUsageStore

        store = MongoUsageStore(settings.mongo_url.get_secret_value(), settings.mongo_database,
                                settings.mongo_timeout_s)
    return KeyGuard(KeysFile(settings.api_keys_file, settings.api_keys_reload_s),
                    Budgets(store, settings.api_keys_replicas,
                            timeout_s=settings.mongo_timeout_s))


def _report_keys(settings: Settings, personas: list[Persona], api_keys: KeyGuard) -> None:
    """Reports the keys file's state into the ChatbotModel's status, beside the requests."""
    import threading

    from chatbot.status_report import report_api_keys

    keys = api_keys.keys.snapshot()
    for persona in personas:
        threading.Thread(target=report_api_keys, args=(settings, persona.value, keys),
                         daemon=True, name=f"api-keys-report-{persona.value}").start()


def _queue(max_concurrent: int, max_queue: int,
           prior_service_s: float) -> tuple[AdmissionQueue, PerformanceStats]:
    """An admission queue and the statistics its Retry-After estimate reads."""
    stats = PerformanceStats(prior_service_s=prior_service_s)
    return AdmissionQueue(max_concurrent, max_queue, stats.mean_service_s), stats


def build_gpt_services(persona: Persona, settings: Settings, base: ChatService,
                       ) -> dict[str, ChatService]:
    """The GPT routes' services (one per model name, one queue for all), or none without
    `OPENAI_API_KEY`."""
    if settings.openai_api_key is None:
        return {}
    from chatbot.llm.openai_engine import OpenAIEngine, openai_client

    client = openai_client(settings.openai_api_key.get_secret_value(), settings.openai_base_url,
                           settings.openai_timeout_s, settings.openai_max_retries)
    sampling = settings.persona(persona).gpt.apply(GPT_SAMPLING[persona])
    profile = base.profile.model_copy(update={"generation": sampling, "fallback": sampling})
    queue = _queue(settings.openai_max_concurrent, settings.openai_max_queue,
                   settings.persona(persona).prior_service_s)
    return {name: ChatService(profile, OpenAIEngine(client, model), base.store, *queue,
                              base.deadline_s, base.search, base.assistant,
                              base.gate.shutdown)
            for name, model in GPT_MODELS.items()}


def build_peers(settings: Settings):
    """This replica's peers (`chatbot.peers`), or None: affinity off, or no peers given."""
    if not settings.affinity or not (settings.affinity_peers or settings.affinity_peers_dns):
        return None
    from chatbot.peers.discovery import Peers

    return Peers(settings.affinity_self, settings.affinity_peers, settings.affinity_peers_dns,
                 settings.affinity_refresh_s, settings.affinity_down_s)


def placed(app, runtime: PersonaRuntime, settings: Settings, peers):
    """The persona's app behind conversation affinity (each turn to the replica that holds
    its KV cells), when there are peers."""
    if peers is None:
        return app
    import hashlib

    from chatbot.peers.forwarding import AffinityMiddleware, PlacementMetrics

    gate = runtime.service.gate
    served_by = settings.pod_name or hashlib.sha256(peers.self_url.encode()).hexdigest()[:12]
    ps = runtime.settings
    return AffinityMiddleware(
        app, peers, PlacementMetrics(runtime.persona.value, runtime.metrics.registry),
        # Each replica sees only the requests it placed itself: an owner is passed over
        # only past twice its slots (a batch running, one waiting), never for a short wait.
        served_by=served_by, min_bound=2 * ps.max_concurrent,
        load_factor=settings.affinity_load_factor,
        connect_timeout_s=settings.affinity_connect_timeout_s,
        read_timeout_s=ps.request_timeout_s + 30, shutdown=gate.shutdown,
        client_left=lambda: gate.stats.record(Outcome(ok=False, total_s=0.0)))


def build_handoffs(settings: Settings, runtimes: Mapping[Persona, PersonaRuntime], peers):
    """Each persona's KV handoff (`chatbot.peers.handoff`), or none: handoff off, no peers, no
    port, or an engine that keeps no KV between requests."""
    if not settings.kv_handoff or settings.kv_handoff_port is None or peers is None:
        return {}
    from chatbot.llm.batched_engine import BatchedEngine
    from chatbot.peers.handoff import HandoffMetrics, KvHandoff

    return {p.value: KvHandoff(p.value, r.service.engine, peers, settings.kv_handoff_port,
                               HandoffMetrics(p.value, r.metrics.registry),
                               settings.kv_handoff_timeout_s)
            for p, r in runtimes.items() if isinstance(r.service.engine, BatchedEngine)}


@asynccontextmanager
async def handoff_server(settings: Settings, handoffs: Mapping):
    """The handoff's own port, on this replica's peer address (not the public one's)."""
    if not handoffs:
        yield
        return
    import contextlib
    from urllib.parse import urlsplit

    import uvicorn

    from chatbot.peers.handoff import handoff_app

    class PeerServer(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):  # the main server's handlers stay in charge
            yield

    host = urlsplit(settings.affinity_self).hostname
    config = uvicorn.Config(handoff_app(dict(handoffs)), host=host,
                            port=settings.kv_handoff_port, log_level="warning", lifespan="off")
    try:  # bound here: a port that is taken costs the handoff, not the service
        sock = config.bind_socket()
    except SystemExit:
        log.error("KV handoff: cannot listen on %s:%d; no KV is handed over or taken",
                  host, settings.kv_handoff_port)
        yield
        return
    server = PeerServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    watching = [asyncio.create_task(h.watch()) for h in handoffs.values()]
    try:
        yield
    finally:
        for watch in watching:
            watch.cancel()
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 5)


def build_runtime(
    persona: Persona, settings: Settings, engine, store: HistoryStore,
    search: WebSearch | None = None, shutdown: Shutdown | None = None,
    api_keys: KeyGuard | None = None,
) -> PersonaRuntime:
    ps = settings.persona(persona)
    profile = PROFILES[persona]
    profile = profile.model_copy(update={
        "generation": ps.generation.apply(profile.generation),
        "fallback": ps.fallback.apply(profile.fallback),
    })
    search = search or NoWebSearch()
    assistant = OfficeAssistant(getattr(ps, "assistant_name", ""),
                                getattr(ps, "assistant_role", ""))
    service = ChatService(profile, engine, store,
                          *_queue(ps.max_concurrent, ps.max_queue, ps.prior_service_s),
                          ps.request_timeout_s, search, assistant, shutdown)
    metrics = PersonaMetrics(persona.value, service.admission, engine)
    gpt = build_gpt_services(persona, settings, service)
    metrics.watch_dependencies(lambda: [service, *gpt.values()], store, search)
    completions = ChatCompletions(engine, service.gate, profile.generation)
    return PersonaRuntime(persona, ps, service, completions, metrics, gpt, api_keys)


def persona_app(runtime: PersonaRuntime, root_path: str = "", lifespan=None) -> FastAPI:
    app = FastAPI(title=_TITLES[runtime.persona], version=__version__, root_path=root_path,
                  lifespan=lifespan, docs_url=None, redoc_url=None)
    offline_docs(app)  # Swagger UI and ReDoc with their assets served here, not from a CDN
    app.state.runtime = runtime
    # With a keys file, the chat routes need a key (api/auth.py); the operations stay open.
    guarded = [Depends(require_api_key)] if runtime.api_keys is not None else []
    app.include_router(office if runtime.persona is Persona.OFFICE else character,
                       dependencies=guarded)
    app.include_router(common)
    app.include_router(chat_completions, dependencies=guarded)
    app.include_router(playground(runtime.persona, guarded))
    install_error_handlers(app)
    if runtime.api_keys is not None:
        install_api_keys(app, runtime.api_keys,
                         KeyMetrics(runtime.persona.value, runtime.metrics.registry))
    app.router.default = _no_such_route
    app.add_middleware(MetricsMiddleware, observe=runtime.metrics.observe_request)
    return app


async def _not_found(request: Request, exc: Exception | None = None) -> HTMLResponse:
    return HTMLResponse(NOT_FOUND_PAGE, status_code=404)


async def _no_such_route(scope: Scope, receive: Receive, send: Send) -> None:
    """A persona's answer to a path none of its routes match: the HTML 404 page, as for
    paths outside the personas. Its router calls this only when no route matches, so a
    route's own errors (an HTTPException, a 422, a 405 for a known path) stay JSON."""
    if scope["type"] == "websocket":
        return await WebSocketClose()(scope, receive, send)
    await HTMLResponse(NOT_FOUND_PAGE, status_code=404)(scope, receive, send)


def not_found_app() -> Starlette:
    """The route's default backend (`chatbot not-found`): the HTML 404 page for every path.

    The route sends the paths outside the personas here; its probe uses
    NOT_FOUND_HEALTH_PATH, a path no client asks for.
    """

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    methods = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]
    return Starlette(routes=[Route(NOT_FOUND_HEALTH_PATH, healthz),
                             Route("/{path:path}", _not_found, methods=methods)],
                     exception_handlers={404: _not_found, 405: _not_found})


async def requests_settled(runtimes: Mapping[Persona, PersonaRuntime],
                           timeout_s: float = SETTLE_S) -> None:
    """Waits (at most `timeout_s`) until no request holds or waits for a slot: the ones cut
    off after the grace period count themselves as failed as they unwind."""
    services = [service for runtime in runtimes.values()
                for service in (runtime.service, *runtime.gpt_services.values())]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while (any(s.admission.active or s.admission.waiting for s in services)
           and loop.time() < deadline):
        await asyncio.sleep(0.05)


def log_final_counters(runtimes: Mapping[Persona, PersonaRuntime]) -> None:
    """One line per persona once uvicorn drained the answers in flight (lifespan shutdown):
    `final counters <persona>: <the /performance JSON>`, so that the requests a pod served
    can be counted after it is gone (a rollout's terminated pods)."""
    for persona, runtime in runtimes.items():
        report = json.dumps(performance_report(runtime.service), default=str)
        log.info("final counters %s: %s", persona.value, report)


def create_app(settings: Settings, personas: list[Persona] | None = None, *,
               engines: Mapping[Persona, ChatEngine] | None = None,
               search: WebSearch | None = None, shutdown: Shutdown | None = None):
    """The ASGI app: both personas under /office and /character, or one persona at the root.

    `engines` and `search` replace the llama.cpp engines and the web search the settings
    describe (in-process tests give scripted ones); an engine needs `load()` and `close()`
    besides the `ChatEngine` port. `shutdown` is what the server begins on SIGTERM (see
    chatbot/serving.py): it ends the requests still queued or generating with 503s.
    """
    shutdown = shutdown or Shutdown(settings.shutdown_grace_s)
    personas = personas or list(Persona)
    engines = (Engines(engines) if engines is not None
               else Engines.from_settings(settings, personas))
    store = build_store(settings)
    search = search or build_search(settings)
    api_keys = build_api_keys(settings)
    if api_keys is not None and settings.status_report:
        api_keys.keys.on_change = lambda: _report_keys(settings, personas, api_keys)
    runtimes = {p: build_runtime(p, settings, engines.by_persona[p], store, search, shutdown,
                                 api_keys)
                for p in personas}

    async def load_and_report() -> None:
        await engines.load_all()
        if settings.status_report:
            from chatbot.status_report import report

            for persona in personas:
                status = engines.by_persona[persona].status()
                if status.ready:
                    await asyncio.to_thread(report, settings, persona.value, status.facts)

    peers = build_peers(settings)
    handoffs = build_handoffs(settings, runtimes, peers)

    @asynccontextmanager
    async def lifespan(app):
        loading = asyncio.create_task(load_and_report())  # serve /healthz while loading
        if api_keys is not None and settings.status_report:
            _report_keys(settings, personas, api_keys)  # then on every change
        await store.start()  # connects in the background; MongoDB may be down
        try:
            async with handoff_server(settings, handoffs):
                yield
                # Drained: the conversations' KV cells go to their next owners.
                await requests_settled(runtimes)
                for handoff in handoffs.values():
                    await handoff.drain()
        finally:
            loading.cancel()
            try:  # before the engines close: their live counters are part of the line
                await requests_settled(runtimes)
                log_final_counters(runtimes)
            finally:
                await engines.close()
                await store.close()
                if api_keys is not None:
                    await api_keys.budgets.close()
                for runtime in runtimes.values():
                    for gpt in runtime.gpt_services.values():
                        await gpt.engine.close()

    if len(personas) == 1:
        runtime = runtimes[personas[0]]
        app = placed(persona_app(runtime, settings.root_path, lifespan), runtime, settings,
                     peers)
    else:
        mounts = [Mount(f"/{p.value}",
                        app=placed(persona_app(runtimes[p]), runtimes[p], settings, peers))
                  for p in personas]
        app = Starlette(
            routes=[*mounts, Route("/{path:path}", _not_found,
                                   methods=["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"])],
            exception_handlers={404: _not_found, 405: _not_found}, lifespan=lifespan,
        )
    return RequestIdMiddleware(BodyLimitMiddleware(app, settings.max_body_bytes))
