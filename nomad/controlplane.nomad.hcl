# The Tidedesk control plane on Nomad: scales the chat-node and router groups through Nomad's
# HTTP API (python-nomad). It needs a Nomad ACL token allowed to read jobs and scale them
# (policy: namespace "default" { capabilities = ["read-job", "scale-job", "list-jobs"] }),
# kept in the Nomad Variable nomad/jobs/tidedesk-controlplane as nomad_token.

variable "image" {
  type    = string
  default = "tidedesk/tidedesk:latest"
}

variable "datacenters" {
  type    = list(string)
  default = ["dc1"]
}

job "tidedesk-controlplane" {
  datacenters = var.datacenters
  type        = "service"

  group "controlplane" {
    # One scaler; its decisions and pins survive restarts in the state file on the volume.
    count = 1

    network {
      port "http" {
        static = 8090
        to     = 8090
      }
    }

    service {
      name     = "tidedesk-controlplane"
      provider = "nomad"
      port     = "http"
      tags     = ["tidedesk", "controlplane", "metrics"]

      check {
        name     = "alive"
        type     = "http"
        path     = "/healthz"
        interval = "10s"
        timeout  = "2s"
      }
    }

    ephemeral_disk {
      sticky  = true
      migrate = true
      size    = 100
    }

    task "controlplane" {
      driver = "docker"

      config {
        image = var.image
        args = [
          "controlplane",
          "--policies=/local/policies.yml",
          "--listen=0.0.0.0:8090",
          "--token-file=/secrets/controlplane_token_sha256",
          "--state-file=/alloc/data/controlplane-state.json",
        ]
        ports = ["http"]
      }

      template {
        destination = "secrets/controlplane.env"
        env         = true
        change_mode = "restart"
        data        = <<-EOT
        NOMAD_ADDR=http://{{ env "attr.unique.network.ip-address" }}:4646
        {{- with nomadVar "nomad/jobs/tidedesk-controlplane" }}
        NOMAD_TOKEN={{ .nomad_token }}
        {{- end }}
        {{- range nomadService "tidedesk-prometheus" }}
        TIDEDESK_PROMETHEUS_URL=http://{{ .Address }}:{{ .Port }}
        {{- end }}
        EOT
      }

      template {
        # The token's hash only (sha256:<hex>); Alertmanager (infra job) holds the token.
        destination = "secrets/controlplane_token_sha256"
        change_mode = "restart"
        data        = "{{ with nomadVar \"nomad/jobs\" }}{{ .controlplane_token_sha256 }}{{ end }}"
      }

      # The same policies as swarm/policies.yml, with driver nomad and the job/group names.
      template {
        destination = "local/policies.yml"
        change_mode = "restart"
        data        = <<-EOT
        policies:
          - name: chatnode
            service: tidedesk-chatnode
            group: chatnode
            driver: nomad
            min: 2
            max: 20
            warmup: 30s
            scale_up_wait: 2m
            scale_down_cooldown: 10m
            scale_down_stabilization: 5m
            step: {up_max_percent: 50, up_min: 1, down_max: 1}
            checks:
              - name: connections
                query: sum(tidedesk_connections{service="chatnode"}) or (sum(up{service="chatnode"} == 1) * 0)
                target: 500
                for: 1m
              - name: cpu
                query: max(service:process_cpu:avg_rate1m{service="chatnode"})
                upper: 0.7
                lower: 0.3
                for: 5m
          - name: routernode
            service: tidedesk-router
            group: router
            driver: nomad
            min: 1
            max: 12
            checks:
              - name: backlog
                query: sum(tidedesk_router_inflight{service="routernode"})
                target: 200
                for: 2m
        EOT
      }

      resources {
        cpu    = 200
        memory = 256
      }
    }
  }
}
