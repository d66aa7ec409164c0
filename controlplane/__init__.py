"""Tidedesk control plane: the autoscaling daemon for Docker Swarm and Nomad.

Seams (one module each): ``policy`` (where policies come from), ``metrics_source`` (where metric
samples come from), ``decision`` (the pure strategy), ``target`` with ``swarm_target`` and
``nomad_target`` (what gets scaled). ``controller`` wires them for one evaluation, ``daemon``
schedules evaluations and serves the REST API from ``api``. See ``docs/controlplane.md``.
"""
