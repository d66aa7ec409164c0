# The backing services for Tidedesk on Nomad: Redis, RabbitMQ, MariaDB, Prometheus and
# Alertmanager, one group each, registered in Nomad's service discovery for the other jobs'
# templates. For a start or a staging cluster; in production you may run these elsewhere and
# point the templates at them. Host volumes (client config: host_volume "tidedesk-...") keep
# the data across restarts.

variable "datacenters" {
  type    = list(string)
  default = ["dc1"]
}

variable "images" {
  type = map(string)
  default = {
    redis        = "redis:7"
    rabbitmq     = "rabbitmq:3.13"
    mariadb      = "mariadb:11"
    prometheus   = "prom/prometheus:v2.53.0"
    alertmanager = "prom/alertmanager:v0.27.0"
  }
}

job "tidedesk-infra" {
  datacenters = var.datacenters
  type        = "service"

  group "redis" {
    count = 1

    network {
      port "redis" {
        to = 6379
      }
    }

    volume "data" {
      type   = "host"
      source = "tidedesk-redis"
    }

    service {
      name     = "tidedesk-redis"
      provider = "nomad"
      port     = "redis"

      check {
        type     = "tcp"
        interval = "10s"
        timeout  = "2s"
      }
    }

    task "redis" {
      driver = "docker"

      config {
        image = var.images["redis"]
        args  = ["redis-server", "--protected-mode", "no", "--appendonly", "yes", "--save", ""]
        ports = ["redis"]
      }

      volume_mount {
        volume      = "data"
        destination = "/data"
      }

      resources {
        cpu    = 500
        memory = 512
      }
    }
  }

  group "rabbitmq" {
    count = 1

    network {
      port "amqp" {
        to = 5672
      }
    }

    volume "data" {
      type   = "host"
      source = "tidedesk-rabbitmq"
    }

    service {
      name     = "tidedesk-rabbitmq"
      provider = "nomad"
      port     = "amqp"

      check {
        type     = "tcp"
        interval = "10s"
        timeout  = "2s"
      }
    }

    task "rabbitmq" {
      driver = "docker"

      config {
        image    = var.images["rabbitmq"]
        hostname = "rabbitmq"
        ports    = ["amqp"]
        # The default user's password from the Nomad Variable, as a conf.d snippet.
        mount {
          type   = "bind"
          source = "secrets/90-tidedesk.conf"
          target = "/etc/rabbitmq/conf.d/90-tidedesk.conf"
        }
      }

      template {
        destination = "secrets/90-tidedesk.conf"
        change_mode = "restart"
        data        = <<-EOT
        default_user = tidedesk
        default_pass = {{ with nomadVar "nomad/jobs" }}{{ .broker_password }}{{ end }}
        EOT
      }

      volume_mount {
        volume      = "data"
        destination = "/var/lib/rabbitmq"
      }

      resources {
        cpu    = 1000
        memory = 1024
      }
    }
  }

  group "mariadb" {
    count = 1

    network {
      port "mysql" {
        to = 3306
      }
    }

    volume "data" {
      type   = "host"
      source = "tidedesk-mariadb"
    }

    service {
      name     = "tidedesk-mariadb"
      provider = "nomad"
      port     = "mysql"

      check {
        type     = "tcp"
        interval = "10s"
        timeout  = "2s"
      }
    }

    task "mariadb" {
      driver = "docker"

      config {
        image = var.images["mariadb"]
        ports = ["mysql"]
      }

      env {
        MARIADB_DATABASE             = "tidedesk"
        MARIADB_USER                 = "tidedesk"
        MARIADB_PASSWORD_FILE        = "/secrets/db_password"
        MARIADB_RANDOM_ROOT_PASSWORD = "1"
      }

      template {
        destination = "secrets/db_password"
        change_mode = "restart"
        data        = "{{ with nomadVar \"nomad/jobs\" }}{{ .db_password }}{{ end }}"
      }

      volume_mount {
        volume      = "data"
        destination = "/var/lib/mysql"
      }

      resources {
        cpu    = 1000
        memory = 1024
      }
    }
  }

  group "prometheus" {
    count = 1

    network {
      port "http" {
        static = 9090
        to     = 9090
      }
    }

    volume "data" {
      type   = "host"
      source = "tidedesk-prometheus"
    }

    service {
      name     = "tidedesk-prometheus"
      provider = "nomad"
      port     = "http"

      check {
        type     = "http"
        path     = "/-/ready"
        interval = "10s"
        timeout  = "2s"
      }
    }

    task "prometheus" {
      driver = "docker"

      config {
        image = var.images["prometheus"]
        args = [
          "--config.file=/local/prometheus.yml",
          "--storage.tsdb.path=/prometheus",
          "--storage.tsdb.retention.time=15d",
        ]
        ports = ["http"]
        mount {
          type   = "bind"
          source = "local/rules"
          target = "/etc/prometheus/rules"
        }
      }

      # The rules are the repository's files, read by `nomad job run` (run it from the
      # repository root). Other delimiters: the rules' own {{ $labels }} are Prometheus's.
      template {
        destination     = "local/rules/tidedesk-recording.yml"
        data            = file("prometheus/rules/tidedesk-recording.yml")
        left_delimiter  = "[["
        right_delimiter = "]]"
        change_mode     = "signal"
        change_signal   = "SIGHUP"
      }

      template {
        destination     = "local/rules/tidedesk-alerts.yml"
        data            = file("prometheus/rules/tidedesk-alerts.yml")
        left_delimiter  = "[["
        right_delimiter = "]]"
        change_mode     = "signal"
        change_signal   = "SIGHUP"
      }

      # Every Tidedesk service registered in Nomad is scraped; nomad_sd finds new allocations.
      template {
        destination = "local/prometheus.yml"
        change_mode = "signal"
        change_signal = "SIGHUP"
        data        = <<-EOT
        global:
          scrape_interval: 15s
          evaluation_interval: 15s
        rule_files:
          - /etc/prometheus/rules/*.yml
        alerting:
          alertmanagers:
            - static_configs:
                - targets:
        {{- range nomadService "tidedesk-alertmanager" }}
                    - {{ .Address }}:{{ .Port }}
        {{- end }}
        scrape_configs:
          - job_name: tidedesk
            nomad_sd_configs:
              - server: http://{{ env "attr.unique.network.ip-address" }}:4646
                refresh_interval: 10s
            relabel_configs:
              - source_labels: [__meta_nomad_tags]
                regex: .*,metrics,.*
                action: keep
              - source_labels: [__meta_nomad_service]
                regex: tidedesk-(chatnode|router|controlplane|haproxy)
                action: keep
              - source_labels: [__meta_nomad_service]
                regex: tidedesk-(.*)
                target_label: service
              - source_labels: [service]
                regex: router
                replacement: routernode
                target_label: service
              - source_labels: [__meta_nomad_service]
                target_label: job
        EOT
      }

      volume_mount {
        volume      = "data"
        destination = "/prometheus"
      }

      resources {
        cpu    = 500
        memory = 1024
      }
    }
  }

  group "alertmanager" {
    count = 1

    network {
      port "http" {
        to = 9093
      }
    }

    service {
      name     = "tidedesk-alertmanager"
      provider = "nomad"
      port     = "http"

      check {
        type     = "http"
        path     = "/-/ready"
        interval = "10s"
        timeout  = "2s"
      }
    }

    task "alertmanager" {
      driver = "docker"

      config {
        image = var.images["alertmanager"]
        args  = ["--config.file=/local/alertmanager.yml", "--storage.path=/alertmanager",
                 "--cluster.listen-address="]
        ports = ["http"]
      }

      template {
        destination = "secrets/controlplane_token"
        data        = "{{ with nomadVar \"nomad/jobs\" }}{{ .controlplane_token }}{{ end }}"
      }

      # prometheus/alertmanager.yml, with the control plane found through Nomad.
      template {
        destination = "local/alertmanager.yml"
        change_mode = "signal"
        change_signal = "SIGHUP"
        data        = <<-EOT
        route:
          receiver: controlplane
          group_by: [alertname, service]
          group_wait: 10s
          group_interval: 1m
          repeat_interval: 30m
        receivers:
          - name: controlplane
            webhook_configs:
        {{- range nomadService "tidedesk-controlplane" }}
              - url: http://{{ .Address }}:{{ .Port }}/v1/alerts
                send_resolved: true
                http_config:
                  authorization:
                    type: Bearer
                    credentials_file: /secrets/controlplane_token
        {{- end }}
        # The same inhibit rules as prometheus/alertmanager.yml (a test keeps them equal).
        inhibit_rules:
          - source_matchers: [alertname="TidedeskNoChatNodeUp"]
            target_matchers: [service="chatnode", severity="warning"]
            equal: [service]
          - source_matchers: [alertname="TidedeskNoRouterUp"]
            target_matchers: [service="routernode", alertname!="TidedeskNoRouterUp"]
            equal: [service]
          - source_matchers: [alertname="TidedeskDeliverySLOBurn"]
            target_matchers: [alertname="TidedeskHighDeliveryLatency"]
            equal: [service]
        EOT
      }

      resources {
        cpu    = 200
        memory = 256
      }
    }
  }
}
