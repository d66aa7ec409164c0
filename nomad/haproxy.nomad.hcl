# HAProxy for Tidedesk on Nomad. Nomad's native service discovery has no DNS, so the chat
# nodes come from a template: nomadService "tidedesk-chatnode" lists the healthy instances,
# and every change re-renders the file and reloads HAProxy (SIGUSR2 to the master process,
# no connection dropped). Otherwise the same configuration as haproxy/haproxy.cfg.

variable "image" {
  type    = string
  default = "haproxy:2.8"
}

variable "datacenters" {
  type    = list(string)
  default = ["dc1"]
}

job "tidedesk-haproxy" {
  datacenters = var.datacenters
  type        = "service"

  group "haproxy" {
    count = 1

    network {
      port "http" {
        static = 80
        to     = 8080
      }
      port "https" {
        static = 443
        to     = 8443
      }
      port "stats" {
        to = 8404
      }
    }

    service {
      name     = "tidedesk-haproxy"
      provider = "nomad"
      port     = "stats"
      tags     = ["tidedesk", "haproxy", "metrics"]

      check {
        name     = "alive"
        type     = "http"
        path     = "/healthz"
        interval = "10s"
        timeout  = "2s"
      }
    }

    task "haproxy" {
      driver = "docker"

      config {
        image   = var.image
        command = "haproxy"
        args    = ["-W", "-db", "-f", "/local/haproxy.cfg"]
        ports   = ["http", "https", "stats"]
      }

      template {
        destination = "secrets/tls.pem"
        change_mode = "signal"
        change_signal = "SIGUSR2"
        data        = "{{ with nomadVar \"nomad/jobs\" }}{{ .tls_pem }}{{ end }}"
      }

      template {
        destination   = "local/haproxy.cfg"
        change_mode   = "signal"
        change_signal = "SIGUSR2"
        data          = <<-EOT
        global
            log stdout format raw local0 info
            maxconn 9000
            ssl-default-bind-options ssl-min-ver TLSv1.3 no-tls-tickets

        defaults
            mode http
            log global
            option httplog
            option dontlognull
            option forwardfor
            timeout connect         5s
            timeout client          30s
            timeout server          30s
            timeout http-request    10s
            timeout http-keep-alive 10s
            timeout queue           10s
            timeout tunnel          1h
            timeout client-fin      10s
            http-error status 503 content-type application/json string '{"error":{"code":"unavailable","message":"no chat node is ready right now; retry in a few seconds"}}'

        frontend public
            bind :8080
            bind :8443 ssl crt /secrets/tls.pem ssl-min-ver TLSv1.3 alpn h2,http/1.1
            stick-table type ipv6 size 200k expire 60s store http_req_rate(10s),conn_cur
            tcp-request connection track-sc0 src
            tcp-request connection reject if { sc_conn_cur(0) gt 500 }
            http-request deny deny_status 429 content-type application/json string '{"error":{"code":"rate_limited","message":"too many requests from your address; wait a few seconds and retry"}}' if { sc_http_req_rate(0) gt 600 }
            # The chat nodes take the client address from these (per-address rate limits, audit):
            # set here, never passed on from the client (Tornado prefers X-Real-Ip).
            http-request set-header X-Real-Ip %[src]
            http-request set-header X-Forwarded-Proto https if { ssl_fc }
            http-request set-header X-Forwarded-Proto http if !{ ssl_fc }
            default_backend chatnodes

        backend chatnodes
            balance leastconn
            option httpchk
            http-check send meth GET uri /readyz ver HTTP/1.1 hdr Host haproxy
            http-check expect status 200
            default-server check inter 2s fastinter 1s downinter 2s fall 2 rise 2 slowstart 30s
        {{- range $i, $s := nomadService "tidedesk-chatnode" }}
            server chatnode{{ $i }} {{ $s.Address }}:{{ $s.Port }}
        {{- end }}

        frontend observe
            bind :8404
            http-request use-service prometheus-exporter if { path /metrics }
            stats enable
            stats uri /stats
            stats refresh 5s
            monitor-uri /healthz
        EOT
      }

      resources {
        cpu    = 500
        memory = 256
      }
    }
  }
}
