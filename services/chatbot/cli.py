"""The `chatbot` command: `serve` the personas, serve the route's `not-found` page, and
`loadtest` a running stack (the load-test client, chatbot_loadtest, also `chatbot-loadtest`).
(The tiny test model is `chatbot-dev tiny-model`.)"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from chatbot.domain.personas import Persona


def _serve(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from chatbot.composition_root import create_app, model_file
    from chatbot.core.shutdown import Shutdown
    from chatbot.serving import serve
    from chatbot.settings import Settings
    from chatbot_contract import env_name

    overrides = {}
    if args.office_model:
        overrides["office_model"] = args.office_model
    if args.character_model:
        overrides["character_model"] = args.character_model
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        for error in exc.errors():
            path = [str(p) for p in error["loc"]]
            # Fields read under their conventional names (MONGO_URL...) report that name.
            if not path:  # a rule across several settings; the message names them
                print(f"error: configuration: {error['msg']}", file=sys.stderr)
                continue
            env = path[0] if path[0].isupper() else env_name(*path)
            secret = any(word in env for word in ("URL", "KEY", "SECRET", "PASSWORD", "TOKEN"))
            got = "" if secret else f" (got {error.get('input')!r})"
            print(f"error: configuration {'.'.join(path)} (env {env}): {error['msg']}{got}",
                  file=sys.stderr)
        return 2
    personas = [Persona(args.persona)] if args.persona else list(Persona)
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for persona in personas:
        path = model_file(settings, persona)
        if not path.is_file() and settings.model_wait_timeout_s == 0:
            print(f"error: {persona} model file not found: {path}", file=sys.stderr)
            return 2
        logging.getLogger("chatbot").info("%s model: %s", persona, path)
    shutdown = Shutdown(settings.shutdown_grace_s)
    app = create_app(settings, personas, shutdown=shutdown)
    serve(app, shutdown, host=args.host, port=args.port, log_level=settings.log_level,
          proxy_headers=True, forwarded_allow_ips=args.forwarded_allow_ips)
    return 0


def _not_found(args: argparse.Namespace) -> int:
    import uvicorn

    from chatbot.composition_root import not_found_app

    uvicorn.run(not_found_app(), host=args.host, port=args.port, log_level="warning")
    return 0


def _loadtest(arguments: list[str]) -> int:
    """`chatbot loadtest ARGS` is `chatbot-loadtest ARGS`: the client is a package of its own,
    which the service's image does not hold."""
    try:
        from chatbot_loadtest.command import main as loadtest
    except ImportError:
        print("error: `chatbot loadtest` needs the load-test client (chatbot_loadtest) and the "
              "load extra: pip install 'chatbot-ai[load]'", file=sys.stderr)
        return 2
    return loadtest(arguments, prog="chatbot loadtest")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chatbot", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve office and character (or one of them)")
    serve.add_argument("persona", nargs="?", choices=[p.value for p in Persona],
                       help="serve only this persona, at the root path (as its container does)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8001)
    serve.add_argument("--office-model", type=Path, help="GGUF file (env CHATBOT_OFFICE_MODEL)")
    serve.add_argument("--character-model", type=Path,
                       help="GGUF file (env CHATBOT_CHARACTER_MODEL)")
    serve.add_argument("--forwarded-allow-ips",
                       default=os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1"),
                       help="proxies whose X-Forwarded-* headers are trusted "
                            "(env FORWARDED_ALLOW_IPS)")
    serve.set_defaults(func=_serve)

    not_found = sub.add_parser("not-found", help="serve the HTML 404 page for every path "
                                                 "(the route's default backend)")
    not_found.add_argument("--host", default="127.0.0.1")
    not_found.add_argument("--port", type=int, default=8080)
    not_found.set_defaults(func=_not_found)

    # Its arguments are the load-test client's own (`chatbot loadtest --help` lists them).
    sub.add_parser("loadtest", add_help=False,
                   help="run a headless Locust load test and write a report "
                        "(needs the load extra; the same as `chatbot-loadtest`)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "loadtest":
        return _loadtest(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
