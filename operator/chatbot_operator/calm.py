"""Calm reconciles: apply a child only when its desired state changed, and run one pass per
resource for a burst of watch events.

* ``Applied`` remembers, per resource, the hash of each child's manifest as last applied
  successfully; the same hash is also written on the child (annotation
  ``chatbot.treenut.ai/applied-hash``). A pass skips a child whose hash it remembers; after a
  restart or a spec change (``forget``) it reads the child once and skips the apply when the
  child already carries the hash. So a restarted operator reads, and writes nothing.
* Deployments and Jobs are watched anyway: a pass reads them from their last watch event
  (``observe``/``read``), and from the API only when no event has shown them.
* ``Coalescer`` runs a resource's pass after a quiet period, once for all the events that
  arrived meanwhile (a rollout sends a dozen Deployment events in a second); an event during
  a pass schedules exactly one more.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Hashable

from chatbot_contract import GROUP

APPLIED_ANNOTATION = f"{GROUP}/applied-hash"
_MISSING = object()

log = logging.getLogger(__name__)


def manifest_hash(manifest: dict) -> str:
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:16]


def applied_hash(obj: dict | None) -> str | None:
    return ((obj or {}).get("metadata", {}).get("annotations") or {}).get(APPLIED_ANNOTATION)


class Applied:
    """What was applied, per resource (namespace, name): child key -> manifest hash."""

    def __init__(self) -> None:
        self._by_owner: dict[tuple[str, str], dict[tuple[str, str, str], str]] = {}
        self._jobs_seen: dict[tuple[str, str], set[str]] = {}
        self._complete_jobs: dict[tuple[str, str], set[str]] = {}
        self._new: set[tuple[str, str]] = set()
        self._uids: dict[tuple[str, str], str] = {}
        self._observed: dict[tuple[str, str, str], dict] = {}
        self._read_through: set[tuple[str, str]] = set()
        # (namespace, resource, persona) -> pod name -> the Pending pod as last seen.
        self._pending: dict[tuple[str, str, str], dict[str, dict]] = {}
        self._lock = threading.Lock()

    def pod_seen(self, namespace: str, owner: str, persona: str, name: str,
                 pod: dict | None) -> bool:
        """A persona pod's watch event: kept while it is Pending (None: deleted, or no
        longer Pending). True when that changes what ``pending_pods`` returns."""
        key = (namespace, owner, persona)
        with self._lock:
            pods = self._pending.setdefault(key, {})
            before = pods.get(name)
            if pod is None:
                pods.pop(name, None)
            else:
                pods[name] = pod
            return before != pod

    def pending_pods(self, namespace: str, owner: str, persona: str) -> list[dict]:
        """The persona's Pending pods, from the pods' watch events (no API call)."""
        with self._lock:
            return list(self._pending.get((namespace, owner, persona), {}).values())

    def forget(self, namespace: str, name: str, *, new: bool = False) -> None:
        """Re-check every child on the next pass; ``new``: the resource was just created,
        so none of its children exists yet (its uid is new): nothing to read."""
        with self._lock:
            self._by_owner.pop((namespace, name), None)
            self._jobs_seen.pop((namespace, name), None)
            self._complete_jobs.pop((namespace, name), None)
            if new:
                self._new.add((namespace, name))
            else:
                self._new.discard((namespace, name))
                self._read_through.add((namespace, name))

    def observe(self, kind: str, namespace: str, name: str, obj: dict | None) -> None:
        """A watched child as its last watch event showed it (None: deleted)."""
        with self._lock:
            if obj is None:
                self._observed.pop((kind, namespace, name), None)
            else:
                self._observed[(kind, namespace, name)] = obj

    def read(self, cluster, owner: tuple[str, str], api_version: str, kind: str,
             namespace: str, name: str):
        """A watched child (Deployment, Job) from its last watch event, else from the API
        (always from the API in the first pass after ``forget``: a restart, a spec change)."""
        with self._lock:
            seen = None if owner in self._read_through else self._observed.get(
                (kind, namespace, name))
        if seen is not None:
            return seen
        return cluster.get(api_version, kind, namespace, name)

    def bind(self, namespace: str, name: str, uid: str) -> None:
        """The resource's uid as read by a pass: another uid (deleted and created again under
        the same name) forgets everything remembered for the old one."""
        with self._lock:
            old = self._uids.get((namespace, name))
            self._uids[(namespace, name)] = uid
        if old is not None and old != uid:
            self.forget(namespace, name)

    def deleted(self, owner: tuple[str, str], manifest: dict) -> None:
        """A child the pass deleted: applied again (not skipped as unchanged) when wanted."""
        key = (manifest["apiVersion"], manifest["kind"], manifest["metadata"]["name"])
        with self._lock:
            self._by_owner.get(owner, {}).pop(key, None)

    def knows(self, namespace: str, name: str) -> bool:
        """Whether a pass already applied (or checked) this resource's children."""
        with self._lock:
            return bool(self._by_owner.get((namespace, name)))

    def is_new(self, owner: tuple[str, str]) -> bool:
        with self._lock:
            return owner in self._new

    def pass_done(self, owner: tuple[str, str]) -> None:
        with self._lock:
            self._new.discard(owner)
            self._read_through.discard(owner)

    def job_complete(self, owner: tuple[str, str], job: str, complete: bool | None = None):
        """Whether Job ``job`` was seen complete (a final state: no need to read it again);
        with ``complete``, record it."""
        with self._lock:
            seen = self._complete_jobs.setdefault(owner, set())
            if complete:
                seen.add(job)
            return job in seen

    def _get(self, owner: tuple[str, str], key: tuple[str, str, str]) -> str | None:
        with self._lock:
            return self._by_owner.get(owner, {}).get(key)

    def _put(self, owner: tuple[str, str], key: tuple[str, str, str], digest: str) -> None:
        with self._lock:
            self._by_owner.setdefault(owner, {})[key] = digest

    def first_look(self, owner: tuple[str, str], what: str) -> bool:
        """True once per resource (until forgotten) for ``what``: e.g. old Jobs to clean."""
        with self._lock:
            seen = self._jobs_seen.setdefault(owner, set())
            if what in seen:
                return False
            seen.add(what)
            return True

    def apply(self, cluster, owner: tuple[str, str], manifest: dict,
              existing=_MISSING) -> tuple[dict | None, bool]:
        """(the child as the server has it, or None when skipped unread; whether applied).

        ``existing``: the child as just read (None: absent), when the caller reads it anyway
        (Deployments, Jobs): then a child deleted by hand is applied again at once.
        """
        meta = manifest["metadata"]
        key = (manifest["apiVersion"], manifest["kind"], meta["name"])
        digest = manifest_hash(manifest)
        if existing is _MISSING:
            if self._get(owner, key) == digest:
                return None, False
            existing = None if self.is_new(owner) else cluster.get(
                manifest["apiVersion"], manifest["kind"], meta["namespace"], meta["name"])
        if existing is not None and applied_hash(existing) == digest:
            self._put(owner, key, digest)
            return existing, False
        body = copy.deepcopy(manifest)
        body["metadata"].setdefault("annotations", {})[APPLIED_ANNOTATION] = digest
        out = cluster.apply(body)
        self._put(owner, key, digest)
        return out, True


class Coalescer:
    """One pending pass per key, run ``quiet_s`` after the last request (at most ``max_wait_s``
    after the first), on a thread of its own; a request during a pass runs one more after."""

    def __init__(self, run: Callable[[Hashable], None], quiet_s: float, max_wait_s: float,
                 retry_s: float = 5.0, retry_if: Callable[[Exception], bool] = lambda e: True):
        self._run = run
        self.retry_s, self._retry_if = retry_s, retry_if
        self.quiet_s, self.max_wait_s = quiet_s, max_wait_s
        self._pending: dict[Hashable, tuple[float, float]] = {}  # key -> (first, last)
        self._busy: set[Hashable] = set()
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self.passes = 0

    def request(self, key: Hashable) -> None:
        now = time.monotonic()
        with self._lock:
            first, _ = self._pending.get(key, (now, now))
            self._pending[key] = (first, now)
            if key in self._busy:
                return  # its worker picks this up
            self._busy.add(key)
        threading.Thread(target=self._worker, args=(key,), daemon=True,
                         name=f"reconcile-{key}").start()

    def _worker(self, key: Hashable) -> None:
        while not self._stopped.is_set():
            with self._lock:
                first, last = self._pending[key]
            now = time.monotonic()
            wait = min(last + self.quiet_s, first + self.max_wait_s) - now
            if wait > 0:
                self._stopped.wait(wait)
                continue
            with self._lock:
                if self._pending.get(key, (None, None))[1] != last:
                    continue  # a newer request came in while we looked
                del self._pending[key]
            try:
                self.passes += 1
                self._run(key)
            except Exception as exc:  # noqa: BLE001 - logged; retried when transient
                log.warning("reconciling %s failed: %s", key, exc)
                if self._retry_if(exc) and not self._stopped.wait(self.retry_s):
                    with self._lock:
                        at = time.monotonic()
                        self._pending.setdefault(key, (at, at))
            with self._lock:
                if key not in self._pending:
                    self._busy.discard(key)
                    return
        with self._lock:
            self._busy.discard(key)

    def stop(self) -> None:
        self._stopped.set()
