"""docs/deploy.md's command blocks name what exists (issue 19; not the full docs-as-test run):
every script, every `tidedesk` command and option, and every image variable of the stack in
both install paths."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = (REPO / "docs" / "deploy.md").read_text()
BLOCKS = re.findall(r"```sh\n(.*?)```", DOC, re.S)


def commands() -> list[str]:
    """Each command of the sh blocks, continuation lines joined, comments dropped."""
    out = []
    for block in BLOCKS:
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                out.append(line)
    return out


def test_every_script_the_docs_run_exists_and_is_executable() -> None:
    scripts = {m for c in commands() for m in re.findall(r"\b(swarm/[\w.-]+\.sh)\b", c)}
    assert {"swarm/deploy.sh", "swarm/make-secrets.sh", "swarm/rotate-cert.sh"} <= scripts
    for script in scripts:
        path = REPO / script
        assert path.is_file() and os.access(path, os.X_OK), f"{script} is not an executable"


def test_every_tidedesk_command_and_option_in_the_docs_exists() -> None:
    seen = 0
    for command in commands():
        # `tidedesk-entrypoint CMD` anywhere, or `tidedesk CMD` starting a command (elsewhere
        # "tidedesk" is the stack's name).
        # `"$TIDEDESK_IMAGE" CMD` (docker run of the image) goes through the entrypoint too.
        m = (re.search(r"\btidedesk-entrypoint\s+((?:admin\s+)?[a-z][\w-]*)(.*)", command)
             or re.search(r"\"\$\w+_IMAGE\"\s+((?:admin\s+)?[a-z][\w-]*)(.*)", command)
             or re.match(r"tidedesk\s+((?:admin\s+)?[a-z][\w-]*)(.*)", command))
        if m is None:
            continue
        sub = m.group(1).split()
        if not m.group(0).startswith("tidedesk "):  # the image's entrypoint must pass it on
            entrypoint = (REPO / "swarm" / "tidedesk-entrypoint").read_text()
            commands_line = entrypoint[entrypoint.index("COMMANDS = {"):].split("}")[0]
            assert f'"{sub[0]}"' in commands_line, \
                f"swarm/tidedesk-entrypoint does not run `{sub[0]}` as a tidedesk command"
        options = set(re.findall(r"(?<!\S)(--[a-z][\w-]*)", m.group(2).split("|")[0]
                                 .split("<")[0].split(">")[0]))
        done = subprocess.run([sys.executable, "-m", "tidedesk.cli", *sub, "--help"],
                              capture_output=True, text=True, timeout=60, check=False,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
        assert done.returncode == 0, f"`tidedesk {' '.join(sub)}` does not exist: {command}"
        missing = {o for o in options if o not in done.stdout}
        assert not missing, f"`tidedesk {' '.join(sub)}` has no {missing}: {command}"
        seen += 1
    assert seen >= 4, "the runbook should show create-agent, backup, restore, migrate"


def test_both_install_paths_write_out_every_image_variable() -> None:
    stack = (REPO / "docker-stack.yml").read_text()
    variables = set(re.findall(r"\$\{([A-Z_]+_IMAGE):-", stack))
    assert len(variables) == 7, variables
    registry = next(b for b in BLOCKS if "@sha256:" in b)
    offline = next(b for b in BLOCKS
                   if "build-images.sh" in b and "DEPLOY_RESOLVE_IMAGE=never" in b)
    for name, block in (("registry", registry), ("registry-free", offline)):
        written = set(re.findall(r"\b([A-Z_]+_IMAGE)=", block)) - {"DEPLOY_RESOLVE_IMAGE"}
        assert written == variables, f"{name} path: missing {sorted(variables - written)}"
    # Registry images are pinned by digest; local ones are the images build-images.sh makes.
    assert all("@sha256:" in line for line in registry.splitlines() if "_IMAGE=" in line)
    built = (REPO / "swarm" / "build-images.sh").read_text()
    for image in re.findall(r"_IMAGE=(\S+)", offline):
        name = image.split(":")[0].rsplit("/", 1)[-1]
        assert name in built, f"{image} is not made by swarm/build-images.sh"
