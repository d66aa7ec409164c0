# Tidedesk routers on Nomad. Job "tidedesk-router", group "router": the names the control
# plane's example policy scales (controlplane/examples/policies.yml).

variable "image" {
  type    = string
  default = "tidedesk/tidedesk:latest"
}

variable "datacenters" {
  type    = list(string)
  default = ["dc1"]
}

job "tidedesk-router" {
  datacenters = var.datacenters
  type        = "service"

  update {
    max_parallel     = 1
    health_check     = "checks"
    min_healthy_time = "10s"
    healthy_deadline = "3m"
    auto_revert      = true
  }

  group "router" {
    count = 2

    scaling {
      enabled = true
      min     = 1
      max     = 12
      policy {}
    }

    network {
      port "http" {
        to = 8080
      }
    }

    # A router serves /healthz, /readyz and /metrics only.
    service {
      name     = "tidedesk-router"
      provider = "nomad"
      port     = "http"
      tags     = ["tidedesk", "routernode", "metrics"]

      check {
        name     = "ready"
        type     = "http"
        path     = "/readyz"
        interval = "10s"
        timeout  = "2s"
      }
    }

    task "router" {
      driver = "docker"

      config {
        image = var.image
        args  = ["router"]
        ports = ["http"]
      }

      # Finish the current batch (<= 100 rows / 50 ms) and ack it.
      kill_timeout = "30s"

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
