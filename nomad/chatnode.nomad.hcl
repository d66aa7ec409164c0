# Tidedesk chat nodes on Nomad (Docker driver, Nomad's native service discovery).
#
#   nomad var put nomad/jobs @secrets.json      # once: see docs/deploy.md ("Nomad")
#   nomad job run nomad/infra.nomad.hcl
#   nomad job run nomad/chatnode.nomad.hcl
#
# Backends are found through nomadService in templates; secrets come from Nomad Variables at
# nomad/jobs (readable by every job of the namespace). The control plane scales the group
# "chatnode" of this job through Nomad's API, within the scaling block's bounds.

variable "image" {
  type    = string
  default = "tidedesk/tidedesk:latest"
}

variable "datacenters" {
  type    = list(string)
  default = ["dc1"]
}

job "tidedesk-chatnode" {
  datacenters = var.datacenters
  type        = "service"

  update {
    max_parallel      = 1
    health_check      = "checks"
    min_healthy_time  = "10s"
    healthy_deadline  = "3m"
    progress_deadline = "10m"
    auto_revert       = true
    # A new node is healthy before an old one drains.
    canary       = 1
    auto_promote = true
  }

  group "chatnode" {
    count = 2

    # Bounds Nomad enforces on every scale request, the control plane's included. The policy
    # itself lives in the control plane's policies.yml (driver: nomad, group: chatnode).
    scaling {
      enabled = true
      min     = 2
      max     = 20
      policy {}
    }

    network {
      port "http" {
        to = 8080
      }
    }

    service {
      name     = "tidedesk-chatnode"
      provider = "nomad"
      port     = "http"
      tags     = ["tidedesk", "chatnode", "metrics"]

      # 503 while starting or draining: Nomad (and HAProxy's own check) stop sending traffic.
      check {
        name     = "ready"
        type     = "http"
        path     = "/readyz"
        interval = "5s"
        timeout  = "2s"
      }
    }

    restart {
      attempts = 10
      interval = "5m"
      delay    = "5s"
      mode     = "delay"
    }

    task "chatnode" {
      driver = "docker"

      config {
        image = var.image
        args  = ["chatnode"]
        ports = ["http"]
      }

      # On SIGTERM a chat node drains: reconnect frames over ~3 s, then up to ~20 s of work.
      kill_signal  = "SIGTERM"
      kill_timeout = "40s"

      env {
        TIDEDESK_PORT         = "8080"
        TIDEDESK_LOG_FORMAT   = "json"
        TIDEDESK_ROUTING_FILE = "/local/routing.yml"
      }

      template {
        destination = "secrets/tidedesk.env"
        env         = true
        change_mode = "restart"
        data        = <<-EOT
        {{- with nomadVar "nomad/jobs" }}
        TIDEDESK_JWT_SECRET={{ .jwt_secret }}
        TIDEDESK_AES_KEY={{ .aes_key }}
        TIDEDESK_DATABASE_PASSWORD={{ .db_password }}
        TIDEDESK_BROKER_PASSWORD={{ .broker_password }}
        {{- end }}
        {{- range nomadService "tidedesk-rabbitmq" }}
        TIDEDESK_BROKER_URL=amqp://tidedesk@{{ .Address }}:{{ .Port }}/%2F
        {{- end }}
        {{- range nomadService "tidedesk-redis" }}
        TIDEDESK_REDIS_URL=redis://{{ .Address }}:{{ .Port }}/0
        {{- end }}
        {{- range nomadService "tidedesk-mariadb" }}
        TIDEDESK_DATABASE_URL=mysql://tidedesk@{{ .Address }}:{{ .Port }}/tidedesk
        {{- end }}
        EOT
      }

      template {
        destination = "local/routing.yml"
        change_mode = "restart"
        data        = <<-EOT
        vip_tags: [vip]
        rules:
          - name: vip
            match: {tags: [vip]}
            pool: experts
            fallback: general
            max_wait_s: 60
          - name: everyone
            pool: general
        EOT
      }

      resources {
        cpu    = 1000
        memory = 512
      }
    }
  }
}
