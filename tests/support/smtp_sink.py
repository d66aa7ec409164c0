"""A real SMTP server for tests, run as its own process: ``python -m tests.support.smtp_sink
--port P --dir D``. aiosmtpd accepts every mail and writes each one, as received (with the
envelope in ``X-Sink-*`` headers), to ``D/<n>.eml``; it prints ``ready`` once it listens."""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller


class Sink:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.counter = itertools.count(len(list(folder.glob("*.eml"))) + 1)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        head = (f"X-Sink-From: {envelope.mail_from}\r\n"
                f"X-Sink-To: {', '.join(envelope.rcpt_tos)}\r\n").encode()
        data = envelope.original_content or envelope.content
        path = self.folder / f"{next(self.counter):05d}.eml"
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(head + data)
        os.replace(tmp, path)  # a reader never sees half a mail
        return "250 OK"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", required=True)
    args = parser.parse_args()
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    controller = Controller(Sink(folder), hostname="127.0.0.1", port=args.port)
    controller.start()
    print("ready", flush=True)
    try:
        asyncio.run(asyncio.Event().wait())
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
