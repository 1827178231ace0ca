"""One reconcile pass: read the resource fresh, apply its children, write its status.

A pass returns an Outcome: the status it wrote and, when something could not be done yet
(the route's API is not served), after how long to try again; the kopf handlers turn that
into a retry. The conditions themselves are built in status.py (imported as `conditions`).

Called from the create/update/resume handlers and (coalesced, calm.py) from watch events of
the children; a per-object lock serialises them, and the fresh read means a pass never
applies a stale spec. Children whose manifest did not change since their last successful
apply are not sent again (``Applied``); an unchanged status is not written.
"""

from __future__ import annotations

import datetime
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from kubernetes.client import ApiException
from pydantic import ValidationError

from chatbot_contract import ACCELERATION, GROUP, PLURAL, VERSION
from chatbot_operator import builders, gpu_plan, route_claims
from chatbot_operator import status as conditions
from chatbot_operator.apply import RETRYABLE, Cluster, as_kopf_error
from chatbot_operator.builders import Owner
from chatbot_operator.calm import Applied
from chatbot_operator.config import OperatorConfig
from chatbot_operator.profiles import GpuProfile, UnknownProfile, resolve
from chatbot_operator.spec import PERSONAS, ChatbotModelSpec
from chatbot_operator.status import Condition

log = logging.getLogger(__name__)

# (body, type, reason, message) -> posts a Kubernetes Event on the resource.
EventSink = Callable[[dict, str, str, str], None]

_locks: dict[tuple[str, str], threading.Lock] = {}
_locks_guard = threading.Lock()


def _lock(namespace: str, name: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault((namespace, name), threading.Lock())


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class SpecError(ValueError):
    pass


@dataclass(frozen=True)
class Outcome:
    """What a pass did: the status it wrote (None: the resource is gone or being deleted)
    and, when something it could not do yet may work later, when to try again and why."""

    status: dict | None
    retry_after: float | None = None
    retry_reason: str = ""


def _parse(obj: dict, profiles: dict[str, GpuProfile]) -> ChatbotModelSpec:
    try:
        spec = ChatbotModelSpec.parse(obj.get("spec") or {})
    except ValidationError as exc:
        raise SpecError(str(exc)) from None
    for persona in PERSONAS:
        try:
            resolve(spec.persona(persona).gpu_profile, profiles)
        except UnknownProfile as exc:
            raise SpecError(f"{persona}: {exc}") from None
    return spec


def reconcile(cluster: Cluster, config: OperatorConfig, profiles: dict[str, GpuProfile],
              namespace: str, name: str, event: EventSink,
              applied: Applied | None = None) -> Outcome:
    applied = applied if applied is not None else Applied()
    with _lock(namespace, name):
        try:
            outcome = _reconcile(cluster, config, profiles, namespace, name, event, applied)
        except ApiException as exc:
            applied.forget(namespace, name)  # re-check every child on the next pass
            if exc.status in RETRYABLE or not exc.status:
                raise as_kopf_error(exc, f"reconciling {namespace}/{name}") from exc
            raise
        except Exception:  # a timeout, a cut connection: the same, retried by the caller
            applied.forget(namespace, name)
            raise
    # One line per pass: how many passes a restart or a change took shows in the log.
    log.info("reconciled %s/%s: %s%s", namespace, name,
             (outcome.status or {}).get("phase", "gone or deleting"),
             f" (again in {outcome.retry_after:g}s: {outcome.retry_reason})"
             if outcome.retry_after is not None else "")
    return outcome


def _reconcile(cluster: Cluster, config: OperatorConfig, profiles, namespace: str, name: str,
               event: EventSink, applied: Applied) -> Outcome:
    obj = cluster.get_custom(GROUP, VERSION, PLURAL, namespace, name)
    if obj is None or obj["metadata"].get("deletionTimestamp"):
        return Outcome(None)
    owner = Owner(name, namespace, obj["metadata"]["uid"])
    applied.bind(namespace, name, owner.uid)
    previous = obj.get("status") or {}
    try:
        spec = _parse(obj, profiles)
    except SpecError as exc:
        conds = conditions.all_failed("InvalidSpec", str(exc))
        return Outcome(_write_status(cluster, obj, owner, conds, {}, {}, None, event))

    download = previous.get("download") or {}
    plans = {p: gpu_plan.plan(spec, p, resolve(spec.persona(p).gpu_profile, profiles),
                              download.get(p), config) for p in PERSONAS}
    spec = gpu_plan.resolved(spec, plans)  # gpuLayers "auto" -> the layers that fit
    try:
        states = _apply_children(cluster, config, profiles, owner, spec, obj, event, applied,
                                 plans)
    except ApiException as exc:
        if exc.status in RETRYABLE or not exc.status:
            raise
        conds = conditions.all_failed("ApplyFailed", str(as_kopf_error(exc, "applying a child")))
        return Outcome(_write_status(cluster, obj, owner, conds, {}, {}, spec, event))
    model_states, ready, (route_cond, route_retry), jobs, scaling = states

    conds = [conditions.model_condition(model_states, jobs, previous.get("download"),
                                        builders.needs_fetch(spec))]
    accel: dict[str, gpu_plan.Acceleration] = {}
    for persona in PERSONAS:
        p = spec.persona(persona)
        profile = resolve(p.gpu_profile, profiles)
        accel[persona] = gpu_plan.acceleration(
            persona, p, profile, builders.gpu_layers(p, profile),
            (previous.get(ACCELERATION) or {}).get(persona),
            builders.settings_hash(spec, persona, profile, config))
    for persona in PERSONAS:
        ok, figure = ready[persona]
        a = accel[persona]
        conds.append(conditions.persona_condition(
            persona, ready=ok, figure=figure, model_state=model_states[persona],
            too_large=plans[persona].too_large,
            cpu_fallback=a.message if a.fallback and not spec.persona(persona).allow_cpu_fallback
            else None))
    conds.append(route_cond)
    conds.append(conditions.accelerated_condition(list(accel.values())))
    reports = previous.get("apiKeys") or {}
    keys_cond = conditions.api_keys_condition(spec.api_keys is not None,
                                              {p: reports.get(p) for p in PERSONAS})
    if keys_cond is not None:
        conds.append(keys_cond)
    for cond in (conditions.autoscaling_condition(scaling.applied, scaling.missing,
                                                  scaling.waiting),
                 conditions.scheduled_condition(
                     scaling.unscheduled, bool(scaling.autoscaled) or any(
                         c.get("type") == "ReplicasScheduled"
                         for c in previous.get("conditions") or []))):
        if cond is not None:
            conds.append(cond)
    figures = {p: ready[p][1] for p in PERSONAS}
    extra: dict = {"accel": ", ".join(a.text for a in accel.values()),
                   # What the next pass deletes should route.kind change, and the claim
                   # this model holds against others (route_claims.py).
                   "route": {"kind": spec.route.kind, "claim": route_claims.claim(spec)}
                   if route_cond.reason == "Applied" else {"kind": None, "claim": None}}
    # The ScaledObjects this model owns (deleted by a later pass whose spec has none) and
    # each persona's replicas as the Deployment has them.
    if scaling.autoscaled or previous.get("autoscaling"):
        extra["autoscaling"] = scaling.autoscaled
    extra["replicas"] = scaling.replicas
    gpu_fits = {p: pl.status for p, pl in plans.items() if pl.status}
    if gpu_fits or previous.get("gpuFit"):
        extra["gpuFit"] = gpu_fits
    status = _write_status(cluster, obj, owner, conds, figures, model_states, spec, event, extra)
    if route_retry:
        # Reported in status; the route's API may get installed: check again later.
        return Outcome(status, config.retry_delay_s, route_cond.message)
    if scaling.missing:
        # The same for KEDA: its ScaledObjects are applied once it is installed.
        return Outcome(status, config.retry_delay_s, "KEDA (scaledobjects.keda.sh) missing")
    return Outcome(status)


@dataclass
class Scaling:
    """What a pass saw of each persona's count: ``applied`` persona -> what its ScaledObject
    does; ``missing`` persona -> the fixed replicas kept without KEDA; ``waiting``: an
    autoscaled persona with no Deployment yet; ``autoscaled``: status.autoscaling;
    ``unscheduled`` persona -> (pods no node takes, why); ``replicas``: status.replicas."""

    applied: dict[str, str]
    missing: dict[str, int]
    waiting: list[str]
    autoscaled: dict[str, dict]
    unscheduled: dict[str, tuple[int, str]]
    replicas: dict[str, dict]


def _scale_persona(cluster: Cluster, config, owner: Owner, spec: ChatbotModelSpec,
                   persona: str, obj: dict, apply, applied: Applied,
                   scaling: Scaling) -> bool:
    """Apply the persona's ScaledObject when it autoscales (or delete the one an earlier
    spec had); True when KEDA owns its count (the Deployment then carries no replicas)."""
    a = spec.persona(persona).autoscaling
    name = builders.deployment_name(owner, persona)
    if a is None:
        if persona in ((obj.get("status") or {}).get("autoscaling") or {}):
            cluster.delete(builders.KEDA_API_VERSION, "ScaledObject", owner.namespace, name)
            applied.deleted((owner.namespace, owner.name), {
                "apiVersion": builders.KEDA_API_VERSION, "kind": "ScaledObject",
                "metadata": {"name": name}})
        return False
    try:
        apply(builders.scaled_object(owner, spec, persona, config))
    except ApiException as exc:
        if exc.status != 404:
            raise
        scaling.missing[persona] = spec.persona(persona).replicas
        return False
    _scaled(scaling, persona, a)
    return True


def _scaled(scaling: Scaling, persona: str, a) -> None:
    scaling.applied[persona] = (
        f"KEDA scales {a.min_replicas}-{a.max_replicas} on {a.metric} "
        f"({builders.AUTOSCALING_METRICS[a.metric]}, target {a.target:g} per pod)")
    scaling.autoscaled[persona] = {"minReplicas": a.min_replicas,
                                   "maxReplicas": a.max_replicas, "metric": a.metric}


def _unscheduled(applied: Applied, owner: Owner, persona: str) -> tuple[int, str]:
    """The persona's pods no node takes, from the Pending pods' watch events."""
    return conditions.unschedulable(applied.pending_pods(owner.namespace, owner.name, persona))


def _apply_children(cluster: Cluster, config, profiles, owner: Owner, spec: ChatbotModelSpec,
                    obj: dict, event: EventSink, applied: Applied,
                    plans: dict[str, gpu_plan.Plan]):
    key = (owner.namespace, owner.name)

    def apply(manifest: dict, existing=...):
        if existing is ...:
            return applied.apply(cluster, key, manifest)[0]
        return applied.apply(cluster, key, manifest, existing)[0]

    apply(builders.settings_configmap(owner, spec, profiles, config))
    # The pods' identity too (they report their GPU offload), so also for pvc:// sources.
    for manifest in builders.fetch_rbac(owner):
        apply(manifest)
    fetching = builders.needs_fetch(spec)
    model_states: dict[str, str] = {}
    jobs: dict[str, dict] = {}
    ready: dict[str, tuple[bool, str]] = {}
    scaling = Scaling({}, {}, [], {}, {}, {})
    for persona in PERSONAS:
        if fetching:
            apply(builders.model_pvc(owner, spec, persona))
            job_name = builders.fetch_job_name(owner, spec, persona)
            if applied.job_complete(key, job_name):
                job = {"status": {"conditions": [{"type": "Complete", "status": "True"}]}}
            elif applied.is_new(key):
                job = None
            else:
                job = applied.read(cluster, key, "batch/v1", "Job", owner.namespace,
                                   job_name)
            if job is None:
                job = apply(builders.fetch_job(owner, spec, persona, profiles, config), None)
                cluster.patch_custom_status(GROUP, VERSION, PLURAL, owner.namespace, owner.name,
                                            {"status": {"download": {persona: {
                                                "phase": "Pending", "percent": 0,
                                                "bytesDone": 0,
                                                "file": spec.persona(persona).file,
                                                "message": None, "gguf": None}}}})
                event(obj, "Normal", "FetchStarted",
                      f"{persona}: downloading {spec.persona(persona).file} (Job {job_name})")
            jobs[persona] = job
            model_states[persona] = conditions.job_state(job)
            applied.job_complete(key, job_name, model_states[persona] == "complete")
            if applied.first_look(key, job_name) and not applied.is_new(key):
                _delete_stale_jobs(cluster, owner, persona, job_name, event, obj)
        else:
            model_states[persona] = "complete"

        dep_name = builders.deployment_name(owner, persona)
        existing = None if applied.is_new(key) else applied.read(
            cluster, key, "apps/v1", "Deployment", owner.namespace, dep_name)
        dep = existing
        p = spec.persona(persona)
        autoscaled = False
        if model_states[persona] == "complete" and not plans[persona].too_large:
            autoscaled = _scale_persona(cluster, config, owner, spec, persona, obj, apply,
                                        applied, scaling)
            dep = apply(builders.persona_deployment(owner, spec, persona, profiles, config,
                                                    autoscaled=autoscaled), existing)
            before = (existing or {}).get("metadata", {}).get("generation")
            if existing is None:
                event(obj, "Normal", "DeploymentCreated", f"{persona}: Deployment {dep_name}")
            elif dep["metadata"].get("generation") != before:
                event(obj, "Normal", "DeploymentUpdated",
                      f"{persona}: Deployment {dep_name} updated (generation "
                      f"{dep['metadata'].get('generation')})")
        elif p.autoscaling is not None:
            if persona in ((obj.get("status") or {}).get("autoscaling") or {}):
                # A new model downloads: the running pods stay KEDA's meanwhile.
                _scaled(scaling, persona, p.autoscaling)
                autoscaled = True
            else:
                scaling.waiting.append(persona)
        apply(builders.persona_service(owner, persona))
        apply(builders.peers_service(owner, persona))
        scaling.unscheduled[persona] = _unscheduled(applied, owner, persona)
        ready[persona] = conditions.deployment_ready(
            dep, p.replicas, unschedulable=scaling.unscheduled[persona][0],
            scaled=(p.autoscaling.min_replicas, p.autoscaling.max_replicas)
            if autoscaled else None)
        dep_status = (dep or {}).get("status") or {}
        scaling.replicas[persona] = {
            "desired": ((dep or {}).get("spec") or {}).get("replicas", p.replicas)
            if dep else 0,
            "current": dep_status.get("replicas") or 0,
            "ready": dep_status.get("readyReplicas") or 0,
            "unschedulable": scaling.unscheduled[persona][0],
            "autoscaled": autoscaled}

    route = _apply_route(cluster, owner, spec, obj, apply, applied,
                         ((obj.get("status") or {}).get("route") or {}).get("kind"))
    applied.pass_done(key)
    return model_states, ready, route, jobs, scaling


def _delete_stale_jobs(cluster: Cluster, owner: Owner, persona: str, current: str,
                       event: EventSink, obj: dict) -> None:
    sel = ",".join(f"{k}={v}" for k, v in
                   builders.selector(owner, f"{persona}-fetch").items())
    for job in cluster.list("batch/v1", "Job", owner.namespace, sel):
        old = job["metadata"]["name"]
        if old != current:
            cluster.delete("batch/v1", "Job", owner.namespace, old)
            event(obj, "Normal", "FetchJobReplaced", f"{persona}: deleted old Job {old}")


def _apply_route(cluster: Cluster, owner: Owner, spec: ChatbotModelSpec, obj: dict,
                 apply, applied: Applied, previous_kind: str | None,
                 ) -> tuple[Condition, bool]:
    """The route and its 404 backend: (RouteReady, whether to try again later).

    When route.kind changed, the route of the previous kind (``status.route.kind``) is
    deleted: an Ingress left behind by a move to HTTPRoute would go on serving. So is the
    route another ChatbotModel of the namespace has (route_claims.py), until it is free."""
    manifest = builders.route(owner, spec)
    if previous_kind and previous_kind != (manifest or {}).get("kind"):
        api_version = builders.ROUTE_API_VERSIONS.get(previous_kind)
        if api_version:
            cluster.delete(api_version, previous_kind, owner.namespace, owner.name)
    if manifest is None:
        return conditions.route_disabled(), False
    holder = None if route_claims.holds(obj, spec) else route_claims.holder(
        obj, spec, cluster.list(f"{GROUP}/{VERSION}", "ChatbotModel", owner.namespace, ""))
    if holder is not None:
        cluster.delete(manifest["apiVersion"], manifest["kind"], owner.namespace, owner.name)
        applied.deleted((owner.namespace, owner.name), manifest)
        return conditions.route_conflict(holder, route_claims.claim(spec)), True
    apply(builders.not_found_deployment(owner, spec))
    apply(builders.service(owner, builders.not_found_name(owner), "not-found"))
    try:
        apply(manifest)
    except ApiException as exc:
        if exc.status == 404:
            return conditions.route_api_missing(manifest["kind"], manifest["apiVersion"]), True
        raise
    return conditions.route_applied(manifest["kind"], owner.name, builders.ROUTE_PORT), False


def _write_status(cluster: Cluster, obj: dict, owner: Owner, conds: list[Condition],
                  figures: dict[str, str], model_states: dict[str, str],
                  spec: ChatbotModelSpec | None, event: EventSink,
                  extra: dict | None = None) -> dict:
    previous = obj.get("status") or {}
    for c in conditions.transitions(previous.get("conditions"), conds):
        if c.status is None:
            continue  # Unknown: nothing happened yet worth an Event
        kind = "Normal" if c.status is not False or c.reason in (
            "Downloading", "WaitingForModel", "RollingOut") else "Warning"
        event(obj, kind, c.reason if not c.status else c.type, c.message)
    status: dict = {
        "phase": conditions.phase(conds),
        "observedGeneration": obj["metadata"].get("generation"),
        "conditions": conditions.merge_conditions(previous.get("conditions"), conds, _now()),
        "officeReady": figures.get("office", "-"),
        "characterReady": figures.get("character", "-"),
        "modelProgress": conditions.progress_text(previous.get("download"), model_states)
        if model_states else "-",
    }
    if spec is not None:
        status["endpoints"] = builders.endpoints(owner, spec)
    status |= extra or {}
    download_done = {p: {"phase": "Done", "percent": 100} for p, s in model_states.items()
                     if s == "complete" and spec is not None and builders.needs_fetch(spec)
                     and ((previous.get("download") or {}).get(p) or {}).get("phase") != "Done"}
    if download_done:
        status["download"] = download_done
    # download: merged into what the fetch Job wrote; gpuFit: replaced (a persona no longer
    # on auto loses its entry).
    changed = {k: _replacing(previous.get(k), v) if k in ("gpuFit", "autoscaling") else v
               for k, v in status.items() if previous.get(k) != v}
    if changed:
        cluster.patch_custom_status(GROUP, VERSION, PLURAL, owner.namespace, owner.name,
                                    {"status": changed})
    return status


def _replacing(old, new):
    """A merge patch that leaves ``new`` in place of ``old`` (keys gone are nulled)."""
    if isinstance(old, dict) and isinstance(new, dict):
        return {**dict.fromkeys(set(old) - set(new)), **new}
    return new
