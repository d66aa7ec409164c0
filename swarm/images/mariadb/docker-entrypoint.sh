#!/bin/sh
# Initialise /var/lib/mysql on first start, (re)apply the database and user every start, run
# mariadbd as mysql. Secrets come from *_FILE variables, as with the official image.
set -eu
file_env() { # VAR: VAR_FILE's content wins
  eval "f=\${$1_FILE:-}"
  if [ -n "$f" ]; then eval "$1=\$(cat \"\$f\")"; export "$1"; fi
}
sql_quote() { printf '%s' "$1" | sed "s/\\\\/\\\\\\\\/g; s/'/''/g"; }
file_env MARIADB_PASSWORD
file_env MARIADB_ROOT_PASSWORD
if [ "${1:-mariadbd}" != mariadbd ]; then exec "$@"; fi
datadir=/var/lib/mysql
mkdir -p "$datadir" /run/mysqld
chown -R mysql:mysql "$datadir" /run/mysqld
if [ ! -d "$datadir/mysql" ]; then
  mariadb-install-db --user=mysql --datadir="$datadir" --skip-test-db \
    --auth-root-authentication-method=normal >/dev/null
fi
init=/run/mysqld/init.sql
root_pw="${MARIADB_ROOT_PASSWORD:-}"
if [ -z "$root_pw" ] && [ -n "${MARIADB_RANDOM_ROOT_PASSWORD:-}" ]; then
  root_pw=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
fi
{
  [ -n "$root_pw" ] && echo "ALTER USER 'root'@'localhost' IDENTIFIED BY '$(sql_quote "$root_pw")';"
  if [ -n "${MARIADB_DATABASE:-}" ]; then
    echo "CREATE DATABASE IF NOT EXISTS \`${MARIADB_DATABASE}\`;"
  fi
  if [ -n "${MARIADB_USER:-}" ]; then
    pw=$(sql_quote "${MARIADB_PASSWORD:-}")
    echo "CREATE USER IF NOT EXISTS '${MARIADB_USER}'@'%' IDENTIFIED BY '$pw';"
    echo "ALTER USER '${MARIADB_USER}'@'%' IDENTIFIED BY '$pw';"
    [ -n "${MARIADB_DATABASE:-}" ] && echo "GRANT ALL ON \`${MARIADB_DATABASE}\`.* TO '${MARIADB_USER}'@'%';"
  fi
  echo "FLUSH PRIVILEGES;"
} >"$init"
chown mysql:mysql "$init"; chmod 600 "$init"
exec mariadbd --user=mysql --datadir="$datadir" --bind-address=0.0.0.0 --skip-name-resolve \
  --init-file="$init"
