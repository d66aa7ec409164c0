"""Helpers shared by every test folder; each module holds one thing:

- ``waiting``: ``wait_until(what, probe, timeout)`` and its async twin (readiness polling).
- ``processes``: a free loopback port, waiting for /readyz, stopping a process.
- ``routing``: the routing YAML most tests use, and writing one for a server.
- ``clients``: an embedded Tidedesk on loopback and real HTTP / WebSocket clients for it.
- ``cluster``: chat nodes and routers as processes on RabbitMQ, Redis and MariaDB.
- ``mariadb``: throwaway MariaDB databases.
- ``metrics``: scraping /metrics and comparing samples.
- ``resilient_client``: the widget-like client of the chaos tests and the Swarm e2e: it
  reconnects, resumes and resends, keeps every connection's frames and a ledger of sends.
- ``http``: blocking JSON over HTTP(S), and TLS that accepts the test certificate.
- ``swarm``: the docker CLI and this machine's single-node Swarm.
- ``mail``: real mail servers: aiosmtpd in its own process (``smtp_sink``) and Dovecot with a
  throwaway mailbox (IMAP ``APPEND`` puts replies in).
- ``forward``: a TCP forwarder opened late on a chosen port (a backend that appears).
"""
