"""The model-fetch program run by the Job: `python -m chatbot_operator.fetch ...`.

For each file: skip it when present (and verified, when a sha256 is given); otherwise
download into ``<file>.part``, resuming with an HTTP Range request after a cut connection
or a restarted pod, verify the sha256, fsync and rename into place (a reader never sees a
half-written model). Progress (bytes, percent) goes to stdout and, with ``--report
NS/NAME/PERSONA``, into the ChatbotModel's ``status.download.<persona>``; the last report
also carries the model's shape from its GGUF header (``gguf``: layers, tensor bytes per
layer, KV heads...), from which the operator computes gpuLayers "auto".

Exit codes: 0 done, 2 usage, 3 checksum mismatch, 4 download failed.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from chatbot_operator.gguf_header import GgufError, read_facts

CHUNK = 1 << 20
VERIFIED_SUFFIX = ".sha256"
PART_SUFFIX = ".part"


class FetchError(RuntimeError):
    exit_code = 4


class ChecksumMismatch(FetchError):
    exit_code = 3


@dataclass
class Progress:
    """Bytes done of the known total, reported at most every ``interval`` seconds."""

    file: str = ""
    done: int = 0
    total: int | None = None
    phase: str = "Downloading"
    message: str | None = None
    gguf: dict | None = None
    sinks: list[Callable[[dict], None]] = field(default_factory=list)
    interval: float = 2.0
    _last: float = 0.0

    def snapshot(self) -> dict:
        snap = {"phase": self.phase, "file": self.file, "bytesDone": self.done,
                "message": self.message}
        if self.total:
            snap["bytesTotal"] = self.total
            snap["percent"] = round(100 * self.done / self.total, 1)
        if self.gguf is not None:
            snap["gguf"] = self.gguf
        return snap

    def report(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        snap = self.snapshot()
        for sink in self.sinks:
            try:
                sink(snap)
            except Exception as exc:  # noqa: BLE001 - progress must never stop a download
                print(f"progress report failed: {exc}", file=sys.stderr, flush=True)


def print_sink(snap: dict) -> None:
    pct = f" ({snap['percent']:.1f}%)" if "percent" in snap else ""
    total = f"/{snap['bytesTotal']}" if "bytesTotal" in snap else ""
    extra = f" - {snap['message']}" if snap.get("message") else ""
    print(f"{snap['phase']}: {snap['file']} {snap['bytesDone']}{total} bytes{pct}{extra}",
          flush=True)


def status_sink(target: str) -> Callable[[dict], None]:
    """Patch status.download.<persona> of ChatbotModel NS/NAME (in-cluster or $KUBECONFIG)."""
    import kubernetes

    from chatbot_contract import GROUP, PLURAL, VERSION

    namespace, name, persona = target.split("/")
    try:
        kubernetes.config.load_incluster_config()
        api = kubernetes.client.ApiClient()
    except kubernetes.config.ConfigException:
        api = kubernetes.config.new_client_from_config()
    custom = kubernetes.client.CustomObjectsApi(api)

    def sink(snap: dict) -> None:
        custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, name,
            {"status": {"download": {persona: snap}}})

    return sink


def url_for(source: str, revision: str, file: str, hf_endpoint: str | None = None) -> str:
    if source.startswith("hf://"):
        base = (hf_endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
        repo = source.removeprefix("hf://").strip("/")
        return f"{base.rstrip('/')}/{repo}/resolve/{revision}/{file}"
    if source.startswith(("https://", "http://")):
        return f"{source.rstrip('/')}/{file}"
    raise FetchError(f"cannot download from {source!r}: use hf:// or https://")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _already_there(final: Path, expected: str | None, progress: Progress) -> bool:
    if not final.is_file():
        return False
    if expected is None:
        return True  # only complete files are ever renamed into place
    marker = final.with_name(final.name + VERIFIED_SUFFIX)
    stat = final.stat()
    stamp = f"{expected} {stat.st_size} {stat.st_mtime_ns}"
    if marker.is_file() and marker.read_text().strip() == stamp:
        return True
    progress.phase, progress.message = "Verifying", f"checking the present {final.name}"
    progress.report(force=True)
    if sha256_of(final) == expected:
        marker.write_text(stamp + "\n")
        return True
    final.unlink()  # present but wrong: fetch it again
    return False


def _open(url: str, offset: int, token: str | None, timeout: float):
    req = urllib.request.Request(url, headers={"User-Agent": "chatbot-operator-fetch"})
    if offset:
        req.add_header("Range", f"bytes={offset}-")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        return urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416:
            return exc  # the part file is already complete
        raise


def _total_from(resp, offset: int) -> int | None:
    content_range = resp.headers.get("Content-Range")
    if content_range and "/" in content_range:
        size = content_range.rsplit("/", 1)[1]
        return int(size) if size.isdigit() else None
    length = resp.headers.get("Content-Length")
    return int(length) + (offset if resp.status == 206 else 0) if length else None


def download_file(url: str, dest_dir: Path, file: str, expected: str | None,
                  progress: Progress, *, token: str | None = None, attempts: int = 5,
                  timeout: float = 60, backoff: float = 1.0) -> Path:
    """Download one file (resuming), verify it, and move it into place atomically."""
    final = dest_dir / file
    final.parent.mkdir(parents=True, exist_ok=True)
    progress.file = file
    if _already_there(final, expected, progress):
        size = final.stat().st_size
        progress.done, progress.total = size, size
        progress.phase, progress.message = "Done", "already present"
        _inspect(final, progress)
        progress.report(force=True)
        return final
    part = final.with_name(final.name + PART_SUFFIX)
    failures = 0
    while True:
        offset = part.stat().st_size if part.exists() else 0
        progress.phase, progress.message = "Downloading", None
        try:
            resp = _open(url, offset, token, timeout)
            with resp:
                if getattr(resp, "code", None) == 416:
                    break
                if resp.status == 200 and offset:
                    offset = 0  # the server ignored Range: start over
                progress.total = _total_from(resp, offset)
                progress.done = offset
                progress.report(force=True)
                with open(part, "ab" if offset else "wb") as out:
                    while chunk := resp.read(CHUNK):
                        out.write(chunk)
                        progress.done += len(chunk)
                        progress.report()
                    out.flush()
                    os.fsync(out.fileno())
            if progress.total is not None and progress.done < progress.total:
                raise ConnectionError(f"connection closed at {progress.done} of "
                                      f"{progress.total} bytes")
            break
        except (OSError, http.client.HTTPException) as exc:
            if isinstance(exc, urllib.error.HTTPError) and exc.code < 500 and exc.code != 429:
                raise FetchError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
            failures += 1
            progress.message = f"attempt {failures} failed: {exc}; resuming"
            progress.report(force=True)
            if failures >= attempts:
                raise FetchError(f"{url}: giving up after {attempts} attempts: {exc}") from exc
            time.sleep(backoff * failures)
    if expected is not None:
        progress.phase, progress.message = "Verifying", "sha256"
        progress.report(force=True)
        actual = sha256_of(part)
        if actual != expected:
            part.unlink()
            raise ChecksumMismatch(f"sha256 mismatch for {file}: expected {expected}, "
                                   f"got {actual}; the file was deleted")
    os.replace(part, final)
    _fsync_dir(final.parent)
    if expected is not None:
        stat = final.stat()
        final.with_name(final.name + VERIFIED_SUFFIX).write_text(
            f"{expected} {stat.st_size} {stat.st_mtime_ns}\n")
    progress.done = final.stat().st_size
    progress.total = progress.done
    progress.phase, progress.message = "Done", None
    _inspect(final, progress)
    progress.report(force=True)
    return final


def _inspect(final: Path, progress: Progress) -> None:
    """The model's shape for gpuLayers "auto"; a file that is no GGUF is said, not fatal."""
    try:
        progress.gguf = read_facts(final).to_status()
    except (GgufError, OSError) as exc:
        progress.gguf = {"error": str(exc)}


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chatbot_operator.fetch",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", required=True, help="hf://owner/repo or https://host/dir")
    parser.add_argument("--revision", default="main")
    parser.add_argument("--dest", required=True, type=Path)
    parser.add_argument("--file", required=True)
    parser.add_argument("--sha256")
    parser.add_argument("--report", help="NS/NAME/PERSONA: write progress into that status")
    parser.add_argument("--interval", type=float, default=2.0,
                        help="seconds between progress reports")
    args = parser.parse_args(argv)
    progress = Progress(sinks=[print_sink], interval=args.interval)
    if args.report:
        progress.sinks.append(status_sink(args.report))
    token = os.environ.get("HF_TOKEN") or None
    try:
        url = url_for(args.source, args.revision, args.file)
        download_file(url, args.dest, args.file, args.sha256, progress, token=token)
    except FetchError as exc:
        progress.phase, progress.message = "Failed", str(exc)
        progress.report(force=True)
        print(f"error: {exc}", file=sys.stderr, flush=True)
        _termination_message(str(exc))
        return exc.exit_code
    return 0


def _termination_message(text: str) -> None:
    try:
        Path("/dev/termination-log").write_text(text)
    except OSError:
        pass


if __name__ == "__main__":
    sys.exit(main())
