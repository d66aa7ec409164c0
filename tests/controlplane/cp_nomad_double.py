"""An HTTP double of the parts of Nomad's HTTP API the control plane uses.

No Nomad agent can be installed on the development and CI machines, so the Nomad target is
tested against this double, driven through python-nomad. It follows Nomad's documented JSON:
``GET /v1/job/:job_id`` (a job with ``TaskGroups[].Count``), ``GET /v1/job/:job_id/allocations``
(allocation stubs with ``ClientStatus`` and ``TaskStates[].StartedAt``), ``GET
/v1/job/:job_id/scale`` (job scale status) and ``POST /v1/job/:job_id/scale`` (body ``Count``,
``Message``, ``Target.Group``, ``Meta``, ``PolicyOverride``; answer ``EvalID``,
``EvalCreateIndex``, ``JobModifyIndex``, ``Index``, ``Warnings``). While a deployment is active
the scale endpoint answers 400 ``job scaling blocked due to active deployment`` like Nomad does.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "123Z"


class NomadDouble:
    def __init__(self, token: str | None = None) -> None:
        self.token = token
        self.lock = threading.Lock()
        self.jobs: dict[tuple[str, str], dict[str, Any]] = {}
        self.allocs: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.active_deployment: set[tuple[str, str]] = set()
        self.scale_requests: list[dict[str, Any]] = []
        self.index = 10
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> NomadDouble:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # --- test knobs ----------------------------------------------------------------------------
    def add_job(
        self, job_id: str, groups: dict[str, int], namespace: str = "default"
    ) -> None:
        with self.lock:
            self.index += 1
            key = (namespace, job_id)
            self.jobs[key] = {
                "ID": job_id,
                "Name": job_id,
                "Namespace": namespace,
                "Type": "service",
                "Status": "running",
                "Stop": False,
                "Version": 0,
                "CreateIndex": self.index,
                "ModifyIndex": self.index,
                "JobModifyIndex": self.index,
                "TaskGroups": [
                    {
                        "Name": name,
                        "Count": 0,
                        "Tasks": [{"Name": "app", "Driver": "docker"}],
                        "Scaling": {"Min": 0, "Max": 100, "Enabled": True},
                    }
                    for name in groups
                ],
            }
            self.allocs[key] = []
            for name, count in groups.items():
                self._set_count(key, name, count, started=time.time() - 3600)

    def count(self, job_id: str, group: str, namespace: str = "default") -> int:
        with self.lock:
            for g in self.jobs[(namespace, job_id)]["TaskGroups"]:
                if g["Name"] == group:
                    return int(g["Count"])
        raise KeyError(group)

    def outside_scale(self, job_id: str, group: str, count: int, ns: str = "default") -> None:
        """What ``nomad job scale`` by a person would do."""
        with self.lock:
            self._set_count((ns, job_id), group, count, started=time.time())

    # --- model ---------------------------------------------------------------------------------
    def _set_count(self, key: tuple[str, str], group: str, count: int, started: float) -> None:
        job = self.jobs[key]
        for g in job["TaskGroups"]:
            if g["Name"] == group:
                g["Count"] = count
        running = [
            a
            for a in self.allocs[key]
            if a["TaskGroup"] == group and a["ClientStatus"] == "running"
        ]
        for a in running[count:]:
            a["ClientStatus"], a["DesiredStatus"] = "complete", "stop"
        for _ in range(count - len(running)):
            self.index += 1
            ns_time = int(started * 1e9)
            self.allocs[key].append(
                {
                    "ID": str(uuid.uuid4()),
                    "EvalID": str(uuid.uuid4()),
                    "Name": f"{key[1]}.{group}[{len(self.allocs[key])}]",
                    "Namespace": key[0],
                    "JobID": key[1],
                    "TaskGroup": group,
                    "DesiredStatus": "run",
                    "ClientStatus": "running",
                    "TaskStates": {
                        "app": {"State": "running", "Failed": False, "StartedAt": _rfc3339(started)}
                    },
                    "CreateIndex": self.index,
                    "ModifyIndex": self.index,
                    "CreateTime": ns_time,
                    "ModifyTime": ns_time,
                }
            )
        self.index += 1
        job["ModifyIndex"] = job["JobModifyIndex"] = self.index
        job["Version"] += 1

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        double = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _send(self, status: int, body: Any) -> None:
                data = (body if isinstance(body, str) else json.dumps(body)).encode()
                self.send_response(status)
                ctype = "text/plain" if isinstance(body, str) else "application/json"
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("X-Nomad-Index", str(double.index))
                self.end_headers()
                self.wfile.write(data)

            def _route(self) -> tuple[tuple[str, str], str] | None:
                url = urlparse(self.path)
                ns = parse_qs(url.query).get("namespace", ["default"])[0]
                parts = url.path.strip("/").split("/")
                if len(parts) < 3 or parts[:2] != ["v1", "job"]:
                    return None
                return (ns, parts[2]), "/".join(parts[3:])

            def _authorised(self) -> bool:
                if double.token and self.headers.get("X-Nomad-Token") != double.token:
                    self._send(403, "Permission denied")
                    return False
                return True

            def do_GET(self) -> None:
                route = self._route()
                if route is None:
                    self._send(404, "Invalid URL path")
                    return
                if not self._authorised():
                    return
                key, rest = route
                with double.lock:
                    job = double.jobs.get(key)
                    if job is None:
                        self._send(404, "job not found")
                    elif rest == "":
                        self._send(200, job)
                    elif rest == "allocations":
                        self._send(200, double.allocs[key])
                    elif rest == "scale":
                        groups = {}
                        for g in job["TaskGroups"]:
                            n = sum(
                                1
                                for a in double.allocs[key]
                                if a["TaskGroup"] == g["Name"] and a["ClientStatus"] == "running"
                            )
                            groups[g["Name"]] = {
                                "Desired": g["Count"], "Placed": n, "Running": n,
                                "Healthy": n, "Unhealthy": 0, "Events": None,
                            }  # fmt: skip
                        self._send(200, {
                            "JobID": key[1], "Namespace": key[0],
                            "JobCreateIndex": job["CreateIndex"],
                            "JobModifyIndex": job["JobModifyIndex"],
                            "JobStopped": False, "TaskGroups": groups,
                        })  # fmt: skip
                    else:
                        self._send(404, "Invalid URL path")

            def do_POST(self) -> None:
                route = self._route()
                if route is None or route[1] != "scale":
                    self._send(404, "Invalid URL path")
                    return
                if not self._authorised():
                    return
                key, _ = route
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    body = json.loads(self.rfile.read(length) or b"{}")
                except ValueError:
                    self._send(400, "Unable to decode body")
                    return
                with double.lock:
                    job = double.jobs.get(key)
                    if job is None:
                        self._send(404, "job not found")
                        return
                    group = (body.get("Target") or {}).get("Group")
                    if not group:
                        self._send(400, "missing task group name")
                        return
                    if group not in [g["Name"] for g in job["TaskGroups"]]:
                        self._send(
                            400, f'task group "{group}" specified for scaling does not exist in job'
                        )
                        return
                    count = body.get("Count")
                    if not isinstance(count, int) or count < 0:
                        self._send(400, "scaling action count can't be negative")
                        return
                    double.scale_requests.append({"job": key[1], **body})
                    if key in double.active_deployment:
                        self._send(400, "job scaling blocked due to active deployment")
                        return
                    double._set_count(key, group, count, started=time.time())
                    self._send(200, {
                        "EvalID": str(uuid.uuid4()), "EvalCreateIndex": double.index,
                        "JobModifyIndex": double.index, "Index": double.index,
                        "Warnings": "", "LastContact": 0, "KnownLeader": False,
                    })  # fmt: skip

        return Handler
