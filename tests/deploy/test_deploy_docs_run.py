"""docs/deploy.md as a runbook, run literally (issue 19): every ``sh`` block in document order,
in one bash (``set -euo pipefail``; variables carry from block to block as in a reader's
terminal), in a copy of this checkout, on the real single-node Swarm, under the stack name
``shop-docs``.

The test is the reader: it sets the values of the blocks marked ``reader-values`` (stack name,
host name, backup directory, the new image, who gets paged), supplies what the doc says the
reader brings (a new certificate from a CA: a local one here), and checks between blocks what
the reader would look at:

* after the first admin: a visitor and the admin (password + the TOTP secret the block
  printed) chat through HAProxy over TLS;
* after the rotation: HAProxy presents the new certificate;
* before the restore: the disaster (``docker stack rm``, the volumes and ``secrets/`` lost but
  the passphrase); after it the old conversation reads back decrypted, through HAProxy;
* after the upgrade: the chat nodes run the new image and the conversation is still there;
* after the paging block: the test page reached an SMTP server and a webhook (one small
  container on the stack's network);
* after the logs block: chat-node log lines are JSON.

Blocks marked ``skip`` (a registry, a second node, a real CA, Nomad) are reported with their
reasons. The environment adds only the published ports (free ones: the machine is shared) and a
shorter rollout monitor (CHATNODE_UPDATE_MONITOR=5s).
The images are the ones the Swarm e2e builds (swarm/build-images.sh, same tags), built first
so the doc's own build-images.sh finds them. On failure every block's script and output, and
the services' state, are saved under artifacts/deploy-docs/.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import shutil
import signal
import ssl
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyotp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.deploy.docs_runbook import Block, blocks, with_values
from tests.deploy.swarm_stack import REPO, build_images
from tests.support.http import http_json, insecure_tls
from tests.support.processes import free_port
from tests.support.resilient_client import ResilientClient
from tests.support.swarm import docker, ensure_swarm, remove_stack
from tests.support.waiting import wait_until

STACK = "shop-docs"  # unique to this test (the e2e and the backup test use shop-e2e)
NEW_IMAGE = "tidedesk/tidedesk:docs-next"  # the "new version": the built image, tagged anew
SINK = f"{STACK}-pagesink"  # the SMTP server and webhook Alertmanager pages
# Name and e-mail are stored encrypted with the AES key: read back, they prove the restored
# stack runs with the backup's key.
VISITOR = {"name": "Dora 读者", "email": "dora@shop.test"}
ARTIFACTS = REPO / "artifacts" / "deploy-docs"
BLOCK_TIMEOUT_S = 330  # swarm/wait-ready.sh waits up to 300 s
COPY_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "build", "artifacts", "secrets", "restored", "deploy.env", "*.pem",
    "*.tdbackup", "admin-password.txt", "__pycache__", "*.pyc", ".mypy_cache", ".ruff_cache",
    ".pytest_cache", ".hypothesis", "*.egg-info")

# What a blank page sink needs: SMTP (2525) and HTTP (8080), each received thing printed as
# one JSON line (read back with `docker logs`). Python's standard library only (the Tidedesk
# image has no aiosmtpd).
SINK_CODE = r'''
import asyncio, json
def out(kind, **kw):
    print(json.dumps({"kind": kind, **kw}), flush=True)
async def smtp(r, w):
    w.write(b"220 pagesink\r\n")
    while line := await r.readline():
        cmd = line.decode(errors="replace").strip().upper()
        if cmd.startswith("EHLO"):
            w.write(b"250-pagesink\r\n250 8BITMIME\r\n")
        elif cmd == "DATA":
            w.write(b"354 go on\r\n"); await w.drain()
            data = []
            while (l := await r.readline()) not in (b".\r\n", b""):
                data.append(l.decode(errors="replace"))
            out("mail", data="".join(data)); w.write(b"250 queued\r\n")
        elif cmd.startswith("QUIT"):
            w.write(b"221 bye\r\n"); await w.drain(); break
        else:
            w.write(b"250 ok\r\n")
        await w.drain()
    w.close()
async def hook(r, w):
    head = (await r.readuntil(b"\r\n\r\n")).decode(errors="replace")
    length = next((int(l.split(":", 1)[1]) for l in head.split("\r\n")
                   if l.lower().startswith("content-length:")), 0)
    body = (await r.readexactly(length)).decode(errors="replace")
    out("webhook", path=head.split()[1], body=body)
    w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    await w.drain(); w.close()
async def main():
    a = await asyncio.start_server(smtp, "0.0.0.0", 2525)
    b = await asyncio.start_server(hook, "0.0.0.0", 8080)
    out("ready")
    await asyncio.gather(a.serve_forever(), b.serve_forever())
asyncio.run(main())
'''


class Shell:
    """One bash for the whole runbook; each block is sourced from its own file (stdin
    /dev/null, output to its own file). ``set -e`` makes the first failing command end the
    shell, and the test, with that block's output."""

    def __init__(self, cwd: Path, env: dict[str, str], scratch: Path) -> None:
        self.scratch = scratch
        self.proc = subprocess.Popen(
            ["bash", "--noprofile", "--norc"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, cwd=cwd, env=env, text=True, start_new_session=True)
        self._send("set -euo pipefail\n")

    def _send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line)
        self.proc.stdin.flush()

    def run(self, block: Block, text: str) -> str:
        script = self.scratch / f"block-{block.number:02d}.sh"
        out = self.scratch / f"block-{block.number:02d}.out"
        done = self.scratch / f"block-{block.number:02d}.done"
        script.write_text(text)
        self._send(f"source {script} </dev/null >{out} 2>&1; echo ok >{done}\n")
        deadline = time.monotonic() + BLOCK_TIMEOUT_S
        while not done.exists():
            rc = self.proc.poll()
            if rc is not None:
                raise AssertionError(f"{block.where()} failed (exit {rc}):\n{text}\n--- output:\n"
                                     f"{out.read_text(errors='replace')[-4000:]}")
            if time.monotonic() > deadline:
                self.close()
                raise AssertionError(f"{block.where()} still running after {BLOCK_TIMEOUT_S} s:"
                                     f"\n{text}\n--- output:\n"
                                     f"{out.read_text(errors='replace')[-4000:]}")
            time.sleep(0.2)
        return out.read_text(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=20)


def local_ca_pem(dest: Path, cn: str) -> str:
    """A certificate for ``cn`` signed by a throwaway CA, chain + key in one file (what
    ``cat fullchain.pem privkey.pem`` gives); returns the leaf certificate's PEM."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "docs-test local CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(cn)]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    leaf_pem = leaf.public_bytes(serialization.Encoding.PEM)
    dest.write_bytes(leaf_pem + ca.public_bytes(serialization.Encoding.PEM)
                     + key.private_bytes(serialization.Encoding.PEM,
                                         serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()))
    return leaf_pem.decode()


@dataclass
class Reader:
    """What the test, as the reader, knows and has seen."""

    checkout: Path
    workdir: Path
    ports: dict[str, int]
    values: dict[str, str]
    email: str = ""
    password: str = ""
    totp_secret: str = ""
    token: str = ""
    conversation: str = ""
    bodies: list[str] = field(default_factory=list)
    leaf_pem: str = ""

    @property
    def https(self) -> str:
        return f"https://127.0.0.1:{self.ports['HTTPS_PORT']}"

    def sign_in(self) -> str:
        code = pyotp.TOTP(self.totp_secret).now()
        status, data = http_json("POST", self.https + "/api/v1/auth/login",
                                 {"email": self.email, "password": self.password, "totp": code},
                                 None, 10.0, insecure_tls())
        assert status == 200, (status, data)
        self.token = str(data["access_token"])
        return self.token

    def stored_bodies(self) -> list[str]:
        status, data = http_json(
            "GET", f"{self.https}/api/v1/conversations/{self.conversation}/messages"
            "?after_seq=0&limit=100", token=self.token, timeout=10, context=insecure_tls())
        assert status == 200, (status, data)
        return [str(m["body"]) for m in data["messages"] if m.get("body") in self.bodies]

    def visitor(self) -> dict[str, str]:
        status, data = http_json("GET", f"{self.https}/api/v1/conversations/{self.conversation}",
                                 token=self.token, timeout=10, context=insecure_tls())
        assert status == 200, (status, data)
        return {"name": data["visitor"]["name"], "email": data["visitor"]["email"]}


# --- checks between blocks ----------------------------------------------------------------------

async def chat(r: Reader) -> None:
    """A visitor and the admin over wss:// through HAProxy: both lines stored and shown."""
    tls = insecure_tls()
    status, data = await asyncio.to_thread(http_json, "POST", r.https + "/api/v1/visitors",
                                           VISITOR, None, 10.0, tls)
    assert status == 201, (status, data)
    wss = f"wss://127.0.0.1:{r.ports['HTTPS_PORT']}"
    visitor = ResilientClient("visitor", f"{wss}/ws/visitor?token={data['token']}", "visitor",
                              tls=tls)
    token = await asyncio.to_thread(r.sign_in)
    agent = ResilientClient("admin", f"{wss}/ws/agent?token={token}", "agent", tls=tls)
    try:
        await agent.start()
        await visitor.start()
        await visitor.send_message("where is my parcel? 我的包裹")
        await asyncio.to_thread(wait_until, "the admin to get the conversation",
                                lambda: visitor.conversation_id in agent.conversations, 30,
                                every=0.5)
        assert visitor.conversation_id is not None
        r.conversation = visitor.conversation_id
        await agent.send_message("on its way, 在路上", r.conversation)
        await visitor.wait_acked(20)
        await agent.wait_acked(20)
        await asyncio.to_thread(wait_until, "both lines shown to both",
                                lambda: len(visitor.shown(r.conversation)) >= 2
                                and len(agent.shown(r.conversation)) >= 2, 20, every=0.5)
    finally:
        await asyncio.gather(visitor.stop(), agent.stop(), return_exceptions=True)
    r.bodies = ["where is my parcel? 我的包裹", "on its way, 在路上"]
    assert r.stored_bodies() == r.bodies
    assert r.visitor() == VISITOR


def after_first_admin(r: Reader, block: Block, out: str) -> None:
    email = next(w for w in block.text.split() if "@" in w)
    r.email = email
    r.password = block.text.split("printf '%s\\n' '", 1)[1].split("'", 1)[0]
    secret = [line.split(":", 1)[1].strip() for line in out.splitlines()
              if line.startswith("TOTP secret:")]
    assert secret, f"create-agent printed no TOTP secret:\n{out}"
    r.totp_secret = secret[0]
    assert not (r.checkout / "admin-password.txt").exists(), "the password file was left behind"
    asyncio.run(chat(r))


def before_rotation(r: Reader, block: Block) -> None:
    r.leaf_pem = local_ca_pem(r.checkout / "new.pem", r.values["TLS_CN"])


def after_rotation(r: Reader, block: Block, out: str) -> None:
    served = ssl.get_server_certificate(("127.0.0.1", r.ports["HTTPS_PORT"]), timeout=10)
    assert served.strip() == r.leaf_pem.strip(), "HAProxy still presents the old certificate"
    assert (r.checkout / "secrets" / "tls.pem").read_text() == \
        (r.checkout / "new.pem").read_text()


def after_backup(r: Reader, block: Block, out: str) -> None:
    files = list(Path(r.values["BACKUP_DIR"]).glob("tidedesk-*.tdbackup"))
    assert len(files) == 1 and files[0].stat().st_size > 100, files


def before_restore(r: Reader, block: Block) -> None:
    """The disaster: the stack, its volumes and secrets/ gone; the reader kept the backups and
    a copy of the passphrase."""
    remove_stack(STACK)
    secrets = r.checkout / "secrets"
    secrets.rename(r.workdir / "secrets-lost")
    secrets.mkdir(mode=0o700)
    shutil.copy(r.workdir / "secrets-lost" / "backup_passphrase", secrets)


def after_restore(r: Reader, block: Block, out: str) -> None:
    assert "policies as in the backup" in out, out
    assert (r.checkout / "secrets" / "aes_key").read_text() == \
        (r.workdir / "secrets-lost" / "aes_key").read_text()
    r.sign_in()  # the agents came back, TOTP secret and all
    assert r.stored_bodies() == r.bodies, "the old conversation did not come back"
    assert r.visitor() == VISITOR, "the visitor's name and e-mail did not come back decrypted"


def before_upgrade(r: Reader, block: Block) -> None:
    docker("tag", "tidedesk/tidedesk:local", NEW_IMAGE)


def after_upgrade(r: Reader, block: Block, out: str) -> None:
    for service in ("chatnode", "routernode"):
        image = docker("service", "inspect", f"{STACK}_{service}", "--format",
                       "{{.Spec.TaskTemplate.ContainerSpec.Image}}")
        assert image == NEW_IMAGE, (service, image)
    assert f"export TIDEDESK_IMAGE={NEW_IMAGE}" in (r.checkout / "deploy.env").read_text()
    assert r.stored_bodies() == r.bodies


def before_paging(r: Reader, block: Block) -> None:
    docker("rm", "-f", SINK, check=False)
    docker("run", "-d", "--name", SINK, "--network", f"{STACK}_tidedesk", "--entrypoint",
           "python3", "tidedesk/tidedesk:local", "-c", SINK_CODE)
    wait_until("the page sink to listen", lambda: '"ready"' in docker("logs", SINK), 30,
               every=0.5)


def after_paging(r: Reader, block: Block, out: str) -> None:
    def received() -> dict[str, list[dict[str, Any]]]:
        got: dict[str, list[dict[str, Any]]] = {"mail": [], "webhook": []}
        for line in docker("logs", SINK).splitlines():
            item = json.loads(line)
            if item["kind"] in got and "TestPage" in json.dumps(item):
                got[item["kind"]].append(item)
        return got

    # group_wait is 10 s; Alertmanager sends the group once it has waited.
    wait_until("the test page by e-mail and webhook",
               lambda: all(received().values()), 60, every=1)
    mail = received()["mail"][0]["data"]
    assert r.values["ALERT_EMAIL_TO"] in mail, mail[:500]
    assert received()["webhook"][0]["path"] == "/page"


def after_logs(r: Reader, block: Block, out: str) -> None:
    records = []
    for line in out.splitlines():
        if "{" in line:
            try:
                records.append(json.loads(line[line.index("{"):]))
            except json.JSONDecodeError:
                pass
    assert records and all("msg" in rec for rec in records), out[-2000:]


Before = Callable[[Reader, Block], None]
After = Callable[[Reader, Block, str], None]
# Each key names exactly one running block (checked): what the reader does around it.
HOOKS: dict[str, tuple[Before | None, After | None]] = {
    "admin create-agent": (None, after_first_admin),
    "swarm/rotate-cert.sh": (before_rotation, after_rotation),
    "tidedesk-entrypoint backup": (None, after_backup),
    "restore - --passphrase-stdin": (before_restore, after_restore),
    '"$NEW_IMAGE" migrate': (before_upgrade, after_upgrade),
    "amtool": (before_paging, after_paging),
    "docker service logs": (None, after_logs),
}


def reader_values(workdir: Path) -> dict[str, str]:
    """The reader's values: every name must be set by a reader-values block."""
    sink = f"{SINK}"
    return {
        "STACK": STACK,
        "TLS_CN": "localhost",
        "BACKUP_DIR": str(workdir / "backups"),
        "NEW_IMAGE": NEW_IMAGE,
        "ALERT_EMAIL_TO": "oncall@shop.test",
        "ALERT_EMAIL_FROM": "alerts@shop.test",
        "ALERT_SMTP_SMARTHOST": f"{sink}:2525",
        "ALERT_SMTP_REQUIRE_TLS": "false",  # the sink speaks plain SMTP
        "ALERT_WEBHOOK_URL": f"http://{sink}:8080/page",
    }


def hooked(block: Block) -> tuple[Before | None, After | None]:
    keys = [k for k in HOOKS if k in block.text]
    assert len(keys) <= 1, f"{block.where()} matches several hooks: {keys}"
    return HOOKS[keys[0]] if keys else (None, None)


# --- the quick checks (no Docker) -------------------------------------------------------------

def test_every_block_runs_or_says_why_and_the_test_knows_each_one(tmp_path: Path) -> None:
    doc = blocks()
    running = [b for b in doc if b.runs]
    assert len(running) >= 10, [b.where() for b in running]
    for b in doc:
        assert b.skip is None or len(b.skip) > 10, f"{b.where()}: say why it is skipped"
    # Every hook has its block, once; every reader value is set by a reader-values block.
    for key in HOOKS:
        assert sum(key in b.text for b in running) == 1, f"no single running block has {key!r}"
    values = reader_values(tmp_path)
    seen: set[str] = set()
    for b in running:
        seen |= with_values(b, values)[1]
    assert seen == set(values), f"no reader-values block sets {sorted(set(values) - seen)}"
    # The runbook names the stack only through $STACK (the test runs it under another name).
    for b in running:
        assert "tidedesk_" not in b.text and " tidedesk " not in b.text, b.where()


def test_markers_are_parsed_strictly() -> None:
    text = "<!-- docs-test: skip — no second node -->\n```sh\necho a\n```\n\n```sh\necho b\n```\n"
    a, b = blocks(text)
    assert (a.skip, a.runs, b.runs) == ("no second node", False, True)
    with pytest.raises(ValueError, match="unknown docs-test marker"):
        blocks("<!-- docs-test: skp — typo -->\n```sh\necho a\n```\n")
    reader = blocks("<!-- docs-test: reader-values -->\n```sh\nexport STACK=tidedesk X=1\n```\n")
    assert with_values(reader[0], {"STACK": "shop docs"}) == (
        "export STACK='shop docs' X=1\n", {"STACK"})


# --- the run ------------------------------------------------------------------------------------

@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_runbook_runs_as_written(tmp_path_factory: pytest.TempPathFactory) -> None:
    workdir = tmp_path_factory.mktemp("deploy-docs")
    ensure_swarm(workdir)
    build_images()  # the e2e's images; the doc's own swarm/build-images.sh then finds them
    remove_stack(STACK)

    checkout = workdir / "checkout"
    shutil.copytree(REPO, checkout, ignore=COPY_IGNORE, symlinks=True)
    (checkout / ".venv").symlink_to(REPO / ".venv")  # build-images.sh's Python
    (REPO / "build").mkdir(exist_ok=True)
    (checkout / "build").symlink_to(REPO / "build")  # the wheelhouse, if a build is needed
    scratch = workdir / "blocks"
    scratch.mkdir()
    ports = {name: free_port() for name in ("HTTP_PORT", "HTTPS_PORT", "CONTROLPLANE_PORT",
                                            "PROMETHEUS_PORT", "ALERTMANAGER_PORT")}
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TIDEDESK_", "ALERT_", "DEPLOY_", "PYTHON"))
           and not k.endswith("_IMAGE") and k not in ("STACK", "TLS_CN", "BACKUP_DIR")}
    env.update({k: str(v) for k, v in ports.items()})
    # The upgrade's rollout watches each new chat node for 5 s instead of 30 s before the next
    # (the e2e shortens HAProxy's slowstart the same way): 50 s less, the same steps.
    env["CHATNODE_UPDATE_MONITOR"] = "5s"
    reader = Reader(checkout, workdir, ports, reader_values(workdir))

    shell = Shell(checkout, env, scratch)
    ran: list[tuple[Block, float]] = []
    skipped = [b for b in blocks() if b.lang == "sh" and b.skip]
    other = [b for b in blocks() if b.lang != "sh"]
    passed = False
    started = time.monotonic()
    try:
        for block in blocks():
            if not block.runs:
                continue
            before, after = hooked(block)
            t0 = time.monotonic()
            if before:
                before(reader, block)
            text, _ = with_values(block, reader.values)
            out = shell.run(block, text)
            if after:
                after(reader, block, out)
            ran.append((block, time.monotonic() - t0))
        passed = True
    finally:
        shell.close()
        summary = [f"docs/deploy.md: {len(ran)} blocks ran, {len(skipped)} skipped, "
                   f"{len(other)} not shell, in {time.monotonic() - started:.0f} s"]
        summary += [f"  ran     {b.where()}: {s:.1f} s" for b, s in ran]
        summary += [f"  skipped {b.where()}: {b.skip}" for b in skipped]
        summary += [f"  not run {b.where()}: a {b.lang or 'plain'} block" for b in other]
        print("\n".join(summary))
        if not passed:
            dest = ARTIFACTS / time.strftime("%Y%m%dT%H%M%S")
            shutil.copytree(scratch, dest)
            (dest / "summary.txt").write_text("\n".join(summary) + "\n")
            (dest / "services.txt").write_text(docker(
                "stack", "ps", "--no-trunc", STACK, check=False, timeout=30))
            (dest / "sink.txt").write_text(docker("logs", SINK, check=False))
            for cid in docker("ps", "-aq", "--filter",
                              f"label=com.docker.stack.namespace={STACK}", check=False).split():
                done = subprocess.run(["docker", "logs", "--timestamps", "--tail", "300", cid],
                                      capture_output=True, text=True, timeout=20, check=False)
                name = docker("inspect", "--format", "{{.Name}}", cid, check=False).strip("/")
                (dest / f"logs-{name or cid}.txt").write_text(done.stdout + done.stderr)
        docker("rm", "-f", SINK, check=False)
        remove_stack(STACK)
        docker("rmi", NEW_IMAGE, check=False)  # the tag only; the image stays
    assert len(ran) == sum(b.runs for b in blocks())
