#!/usr/bin/env bash
# scripts/lib/services.sh: makes PostgreSQL, NATS (with JetStream) and Redis available to
# the scripts and exports DATABASE_URL, NATS_URL and REDIS_URL.
#
# Sourced by scripts/dev, scripts/test and scripts/bench, which call `jeanus_services_up`.
# Run directly, it prints the three `export` lines: `eval "$(scripts/lib/services.sh)"`.
#
# For each server, the first that applies wins:
#   1. DATABASE_URL / NATS_URL / REDIS_URL when set: they must answer, or we fail with one
#      line naming the variable and the address; a database in DATABASE_URL that does not
#      exist is created.
#   2. The servers on the standard local ports: PostgreSQL on 127.0.0.1:5432 as user postgres,
#      NATS on 127.0.0.1:4222 with JetStream, Redis on 127.0.0.1:6379 without a password.
#   3. Project-local servers under .data/ (git-ignored), on loopback and non-standard ports,
#      started on the first run (installing Debian's packages when the binaries are missing)
#      and reused by later runs. They keep running after the script exits; stop them with
#      `scripts/lib/services.sh stop`.
#
# Knobs, read when `jeanus_services_up` runs:
#   JEANUS_DB_NAME          database used when DATABASE_URL is unset (default jeanus_dev)
#   JEANUS_PG_PORT          port probed for a machine PostgreSQL (default 5432)
#   JEANUS_NATS_PORT        port probed for a machine NATS (default 4222)
#   JEANUS_REDIS_PORT       port probed for a machine Redis (default 6379)
#   JEANUS_LOCAL_PG_PORT    port of the project-local PostgreSQL (default 54329)
#   JEANUS_LOCAL_NATS_PORT  port of the project-local NATS (default 42229)
#   JEANUS_LOCAL_REDIS_PORT port of the project-local Redis (default 63799)
#   JEANUS_DATA_DIR         where the project-local servers live (default <repo>/.data)
#
# Every function returns non-zero after printing one `services: error: …` line, so callers
# write `jeanus_services_up || exit 1` (or rely on `set -e`).

jeanus_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

jeanus_say() { printf 'services: %s\n' "$*" >&2; }
jeanus_fail() {
    printf 'services: error: %s\n' "$*" >&2
    return 1
}

# Exports the variables of <repo>/.env that are not already set (the environment wins).
# Lines are KEY=value, optionally quoted, optionally prefixed by `export`; # starts a comment.
jeanus_load_dotenv() {
    local file=$jeanus_root/.env line key value
    [[ -f $file ]] || return 0
    while IFS= read -r line || [[ -n $line ]]; do
        [[ $line =~ ^[[:space:]]*(export[[:space:]]+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$ ]] || continue
        key=${BASH_REMATCH[2]}
        value=${BASH_REMATCH[3]}
        value=${value%"${value##*[![:space:]]}"}
        if [[ $value =~ ^\"(.*)\"$ || $value =~ ^\'(.*)\'$ ]]; then
            value=${BASH_REMATCH[1]}
        fi
        if [[ -z ${!key+set} && -n $value ]]; then
            export "$key=$value"
        fi
    done <"$file"
}

# --- URLs -------------------------------------------------------------------------------

# The host:port part of a URL, without user info; never prints a password.
jeanus_url_address() {
    local rest=${1#*://}
    rest=${rest%%[/?#]*}
    rest=${rest##*@}
    printf '%s' "$rest"
}

# The URL with its password replaced by ***, for messages.
jeanus_url_redacted() {
    # shellcheck disable=SC2001 # a regex replacement, not a simple substitution
    sed -E 's#^([a-z+]+://[^:/@]*):[^@/]*@#\1:***@#' <<<"$1"
}

# Splits host:port (or [v6]:port) into the globals jeanus_host and jeanus_port.
jeanus_split_address() {
    local address=$1 default_port=$2
    if [[ $address == \[* ]]; then
        jeanus_host=${address%%]*}
        jeanus_host=${jeanus_host#[}
        jeanus_port=${address#*]}
        jeanus_port=${jeanus_port#:}
    elif [[ $address == *:* ]]; then
        jeanus_host=${address%%:*}
        jeanus_port=${address##*:}
    else
        jeanus_host=$address
        jeanus_port=
    fi
    jeanus_host=${jeanus_host:-localhost}
    jeanus_port=${jeanus_port:-$default_port}
}

# Splits a PostgreSQL URL into the globals jeanus_pg_db (the database, decoded) and
# jeanus_pg_maintenance_url (the same server and options, database `postgres`).
jeanus_pg_split_url() {
    local url=$1 scheme rest authority after path query
    scheme=${url%%://*}
    rest=${url#*://}
    authority=${rest%%[/?]*}
    after=${rest#"$authority"}
    if [[ $after == /* ]]; then
        path=${after#/}
        jeanus_pg_db=${path%%\?*}
        query=${path#"$jeanus_pg_db"}
    else
        jeanus_pg_db=
        query=$after
    fi
    jeanus_pg_db=$(printf '%b' "${jeanus_pg_db//%/\\x}")
    jeanus_pg_maintenance_url="$scheme://$authority/postgres$query"
}

# --- probes -------------------------------------------------------------------------------

# Whether something accepts TCP connections on host port.
# shellcheck disable=SC2016 # $1 and $2 are the inner bash's arguments
jeanus_tcp_open() {
    timeout 3 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" 2>/dev/null
}

# Prints the INFO line a NATS server sends on connect; fails if none comes.
# shellcheck disable=SC2016 # $1 and $2 are the inner bash's arguments
jeanus_nats_info() {
    local info
    info=$(timeout 4 bash -c 'exec 3<>"/dev/tcp/$1/$2" || exit 1
        IFS= read -r -t 3 line <&3 || exit 1
        printf "%s\n" "$line"' _ "$1" "$2" 2>/dev/null) || return 1
    [[ $info == INFO\ * ]] || return 1
    printf '%s\n' "$info"
}

jeanus_nats_has_jetstream() {
    [[ $1 == *'"jetstream":true'* ]]
}

# Prints a Redis command in RESP, the protocol's array of bulk strings, so that an argument
# may hold spaces or any byte; lengths count bytes.
jeanus_redis_command() {
    local LC_ALL=C arg
    printf '*%d\r\n' "$#"
    for arg; do
        printf '$%d\r\n%s\r\n' "${#arg}" "$arg"
    done
}

# Sends AUTH (when given a password), SELECT (when given a database), then PING to the Redis
# at host port, and sets jeanus_redis_reply to the first error reply (-NOAUTH …, -WRONGPASS …),
# else to the last reply (+PONG). Fails when nothing there answers as Redis does. The password
# goes through a pipe, never on a command line.
# shellcheck disable=SC2016 # $1, $2 and $3 are the inner bash's arguments
jeanus_redis_ping() { # <host> <port> [<user> <password> [<database>]]
    local host=$1 port=$2 user=${3:-} password=${4:-} database=${5:-} count=1 replies line
    [[ -z $password ]] || count=$((count + 1))
    [[ -z $database ]] || count=$((count + 1))
    replies=$({
        if [[ -n $password && -n $user ]]; then
            jeanus_redis_command AUTH "$user" "$password"
        elif [[ -n $password ]]; then
            jeanus_redis_command AUTH "$password"
        fi
        if [[ -n $database ]]; then jeanus_redis_command SELECT "$database"; fi
        jeanus_redis_command PING
    } | timeout 4 bash -c 'exec 3<>"/dev/tcp/$1/$2" || exit 1
        cat >&3
        for ((i = 0; i < $3; i++)); do
            IFS= read -r -t 3 line <&3 || break
            printf "%s\n" "$line"
        done' _ "$host" "$port" "$count" 2>/dev/null) || return 1
    jeanus_redis_reply=
    while IFS= read -r line; do
        line=${line%$'\r'}
        [[ $line == [+-]* ]] || return 1
        jeanus_redis_reply=$line
        [[ $line != -* ]] || break
    done <<<"$replies"
    [[ -n $jeanus_redis_reply ]]
}

# --- packages -----------------------------------------------------------------------------

# Installs Debian packages with apt-get (through sudo when not root).
jeanus_apt_install() {
    local sudo=()
    command -v apt-get >/dev/null ||
        jeanus_fail "$* missing and apt-get is not available: install it yourself, or set DATABASE_URL, NATS_URL and REDIS_URL" ||
        return 1
    if ((EUID != 0)); then
        command -v sudo >/dev/null ||
            jeanus_fail "$* missing, and installing it needs root or sudo: install it, or set DATABASE_URL, NATS_URL and REDIS_URL" ||
            return 1
        sudo=(sudo)
    fi
    jeanus_say "installing Debian packages: $* (apt-get)"
    if ! "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 ||
        ! "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2; then
        jeanus_fail "apt-get install $* failed"
    fi
}

jeanus_require_pg_client() {
    if ! command -v psql >/dev/null || ! command -v pg_isready >/dev/null; then
        jeanus_apt_install postgresql-client || return 1
    fi
}

# Sets jeanus_pg_bindir to a directory with initdb, pg_ctl and postgres of one version:
# the one behind pg_ctl on PATH, else the newest /usr/lib/postgresql/*/bin.
jeanus_find_pg_server() {
    local candidate dirs=()
    if candidate=$(command -v pg_ctl); then
        dirs+=("$(dirname "$(readlink -f "$candidate")")")
    fi
    while IFS= read -r candidate; do
        dirs+=("$candidate")
    done < <(printf '%s\n' /usr/lib/postgresql/*/bin | sort -rV)
    for candidate in "${dirs[@]}"; do
        if [[ -x $candidate/initdb && -x $candidate/pg_ctl && -x $candidate/postgres ]]; then
            jeanus_pg_bindir=$candidate
            return 0
        fi
    done
    return 1
}

jeanus_find_nats_server() {
    jeanus_nats_bin=$(command -v nats-server) && return 0
    [[ -x /usr/sbin/nats-server ]] && jeanus_nats_bin=/usr/sbin/nats-server
}

jeanus_find_redis_server() {
    jeanus_redis_bin=$(command -v redis-server) && return 0
    [[ -x /usr/bin/redis-server ]] && jeanus_redis_bin=/usr/bin/redis-server
}

# --- PostgreSQL ---------------------------------------------------------------------------

# Whether `select 1` succeeds on the URL; on failure, jeanus_pg_error holds psql's first line.
jeanus_pg_try() {
    jeanus_pg_error=$(PGCONNECT_TIMEOUT=5 psql "$1" -w -X -q -A -t -c 'select 1' 2>&1 >/dev/null) && return 0
    jeanus_pg_error=${jeanus_pg_error#psql: error: }
    jeanus_pg_error=${jeanus_pg_error%%$'\n'*}
    return 1
}

# Makes sure the database of the URL exists, creating it through the `postgres` database.
jeanus_pg_ensure_database() {
    local url=$1 variable=$2 address exists
    address=$(jeanus_url_address "$url")
    jeanus_pg_try "$url" && return 0
    jeanus_pg_split_url "$url"
    [[ -n $jeanus_pg_db ]] ||
        jeanus_fail "$variable: cannot connect to PostgreSQL at $address: $jeanus_pg_error" || return 1
    exists=$(PGCONNECT_TIMEOUT=5 psql "$jeanus_pg_maintenance_url" -w -X -q -A -t -v ON_ERROR_STOP=1 \
        -v db="$jeanus_pg_db" 2>/dev/null <<<"select count(*) from pg_database where datname = :'db';") ||
        jeanus_fail "$variable: cannot connect to PostgreSQL at $address: $jeanus_pg_error" || return 1
    if [[ $exists == 0 ]]; then
        jeanus_say "PostgreSQL: creating database $jeanus_pg_db on $address"
        # A concurrent run may create it first: only a database still missing afterwards is an error.
        PGCONNECT_TIMEOUT=5 psql "$jeanus_pg_maintenance_url" -w -X -q -v ON_ERROR_STOP=1 \
            -v db="$jeanus_pg_db" >/dev/null 2>&1 <<<'create database :"db";' || true
    fi
    jeanus_pg_try "$url" ||
        jeanus_fail "$variable: cannot use database $jeanus_pg_db on PostgreSQL at $address: $jeanus_pg_error"
}

# Fails unless the user of DATABASE_URL may create databases (what #[sqlx::test] does).
jeanus_pg_require_createdb() {
    local allowed
    allowed=$(psql "$DATABASE_URL" -w -X -q -A -t \
        -c 'select rolcreatedb or rolsuper from pg_roles where rolname = current_user' 2>/dev/null) ||
        allowed=
    [[ $allowed == t ]] ||
        jeanus_fail "DATABASE_URL: the PostgreSQL user at $(jeanus_url_address "$DATABASE_URL") cannot create databases, which the tests need (grant it CREATEDB)"
}

# Closes, in a subshell about to start a server, every descriptor above stderr: a daemon
# that inherited one would hold it as long as it runs (our lock, a caller's pipe that
# someone waits on). 255 is the script bash itself reads.
jeanus_close_inherited_fds() {
    local fd
    for fd in /proc/"$BASHPID"/fd/*; do
        fd=${fd##*/}
        if [[ $fd =~ ^[0-9]+$ ]] && ((fd > 2 && fd != 255)); then
            { exec {fd}>&-; } 2>/dev/null
        fi
    done
    return 0
}

# Runs a command as the unprivileged owner of the local cluster, from /, since PostgreSQL
# refuses to run as root.
jeanus_as_pg_owner() {
    if ((EUID == 0)); then
        (jeanus_close_inherited_fds && cd / && runuser -u "$jeanus_pg_owner" -- "$@")
    else
        (jeanus_close_inherited_fds && cd / && "$@")
    fi
}

jeanus_pg_local() {
    local dir=$JEANUS_DATA_DIR/postgres port=${JEANUS_LOCAL_PG_PORT:-54329} data version locale
    data=$dir/data
    jeanus_pg_owner=$(id -un)
    if ((EUID == 0)); then
        if id -u postgres >/dev/null 2>&1; then jeanus_pg_owner=postgres; else jeanus_pg_owner=nobody; fi
        command -v runuser >/dev/null ||
            jeanus_fail "runuser is missing, and PostgreSQL cannot run as root: set DATABASE_URL" || return 1
    fi
    if ! jeanus_find_pg_server; then
        jeanus_apt_install postgresql || return 1
        jeanus_find_pg_server || jeanus_fail "no initdb/pg_ctl/postgres found after installing postgresql" || return 1
    fi

    if [[ -f $data/postmaster.pid ]] && jeanus_as_pg_owner "$jeanus_pg_bindir/pg_ctl" status -D "$data" >/dev/null 2>&1; then
        port=$(sed -n 4p "$data/postmaster.pid")
        jeanus_say "PostgreSQL: reusing the project-local server on 127.0.0.1:$port ($dir)"
    else
        if [[ ! -f $data/PG_VERSION ]]; then
            mkdir -p "$dir" && chown "$jeanus_pg_owner" "$dir" ||
                jeanus_fail "cannot create $dir" || return 1
            jeanus_as_pg_owner test -w "$dir" ||
                jeanus_fail "user $jeanus_pg_owner cannot write $dir (check the permissions of its parent directories), or set DATABASE_URL" ||
                return 1
            # C.UTF-8 where the system has it: sorting stays byte-wise, but lower() and ilike
            # fold non-ASCII letters, as on a packaged server.
            locale=C
            if locale -a 2>/dev/null | grep -qix 'c\.utf-\?8'; then locale=C.UTF-8; fi
            jeanus_say "PostgreSQL: initialising a project-local cluster in $data (locale $locale)"
            jeanus_as_pg_owner "$jeanus_pg_bindir/initdb" -D "$data" -U postgres --auth=trust \
                --encoding=UTF8 --locale="$locale" >"$JEANUS_DATA_DIR/initdb.log" 2>&1 ||
                jeanus_fail "initdb failed; see $JEANUS_DATA_DIR/initdb.log" || return 1
            # Loopback TCP only: no Unix socket that could clash with a machine server's.
            jeanus_as_pg_owner tee -a "$data/postgresql.conf" >/dev/null <<'EOF' || return 1

# Added by scripts/lib/services.sh for the project-local development server.
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
max_connections = 200
EOF
        fi
        version=$("$jeanus_pg_bindir/pg_ctl" --version) # "pg_ctl (PostgreSQL) 15.8 …"
        version=${version#*) }
        version=${version%%[.[:space:]]*}
        [[ $(<"$data/PG_VERSION") == "$version" ]] ||
            jeanus_fail "$data was made by PostgreSQL $(<"$data/PG_VERSION"), but the server found is $version ($jeanus_pg_bindir): remove $dir or set DATABASE_URL" ||
            return 1
        ! jeanus_tcp_open 127.0.0.1 "$port" ||
            jeanus_fail "JEANUS_LOCAL_PG_PORT: port 127.0.0.1:$port is taken by another program; choose a free port" ||
            return 1
        jeanus_as_pg_owner "$jeanus_pg_bindir/pg_ctl" start -D "$data" -l "$dir/server.log" -w -t 60 \
            -o "-p $port" >/dev/null ||
            jeanus_fail "the project-local PostgreSQL did not start; see $dir/server.log" || return 1
        jeanus_say "PostgreSQL: started the project-local server on 127.0.0.1:$port ($dir)"
    fi
    DATABASE_URL=postgres://postgres@127.0.0.1:$port/$JEANUS_DB_NAME
}

jeanus_pg_up() {
    local address standard_port=${JEANUS_PG_PORT:-5432}
    jeanus_require_pg_client || return 1
    if [[ -n ${DATABASE_URL:-} ]]; then
        address=$(jeanus_url_address "$DATABASE_URL")
        pg_isready -q -t 5 -d "$DATABASE_URL" >/dev/null 2>&1 ||
            jeanus_fail "DATABASE_URL: PostgreSQL at $address is not reachable" || return 1
        jeanus_pg_ensure_database "$DATABASE_URL" DATABASE_URL || return 1
        jeanus_say "PostgreSQL: using DATABASE_URL ($(jeanus_url_redacted "$DATABASE_URL"))"
        return 0
    fi
    if pg_isready -q -t 3 -h 127.0.0.1 -p "$standard_port" >/dev/null 2>&1; then
        if jeanus_pg_try "postgres://postgres@127.0.0.1:$standard_port/postgres"; then
            DATABASE_URL=postgres://postgres@127.0.0.1:$standard_port/$JEANUS_DB_NAME
            jeanus_pg_ensure_database "$DATABASE_URL" DATABASE_URL || return 1
            jeanus_say "PostgreSQL: using the server on 127.0.0.1:$standard_port ($DATABASE_URL)"
            return 0
        fi
        jeanus_say "PostgreSQL: the server on 127.0.0.1:$standard_port refuses user postgres ($jeanus_pg_error); using a project-local server instead"
    fi
    jeanus_pg_local || return 1
    jeanus_pg_ensure_database "$DATABASE_URL" DATABASE_URL
}

# --- project-local servers ----------------------------------------------------------------

# Prints the port of a project-local server an earlier run started, if it still runs: the
# process of <pidfile> alive, and `<ready> 127.0.0.1 <port of portfile>` succeeding.
jeanus_local_running() {
    local pidfile=$1 portfile=$2 ready=$3 pid port
    [[ -f $pidfile && -f $portfile ]] || return 1
    pid=$(<"$pidfile")
    port=$(<"$portfile")
    [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null && "$ready" 127.0.0.1 "$port" || return 1
    printf '%s\n' "$port"
}

# Waits up to 10 s for `<ready> 127.0.0.1 <port>` to succeed.
jeanus_local_wait() {
    local ready=$1 port=$2 attempt
    for ((attempt = 0; attempt < 100; attempt++)); do
        "$ready" 127.0.0.1 "$port" && return 0
        sleep 0.1
    done
    return 1
}

# --- NATS ---------------------------------------------------------------------------------

# Whether a NATS server with JetStream answers on host port.
jeanus_nats_ready() {
    local info
    info=$(jeanus_nats_info "$1" "$2") && jeanus_nats_has_jetstream "$info"
}

jeanus_nats_local() {
    local dir=$JEANUS_DATA_DIR/nats port=${JEANUS_LOCAL_NATS_PORT:-42229} running
    local pidfile=$JEANUS_DATA_DIR/nats.pid portfile=$JEANUS_DATA_DIR/nats.port
    if running=$(jeanus_local_running "$pidfile" "$portfile" jeanus_nats_ready); then
        NATS_URL=nats://127.0.0.1:$running
        jeanus_say "NATS: reusing the project-local server on 127.0.0.1:$running ($dir)"
        return 0
    fi
    if ! jeanus_find_nats_server; then
        jeanus_apt_install nats-server || return 1
        jeanus_find_nats_server || jeanus_fail "no nats-server found after installing nats-server" || return 1
    fi
    ! jeanus_tcp_open 127.0.0.1 "$port" ||
        jeanus_fail "JEANUS_LOCAL_NATS_PORT: port 127.0.0.1:$port is taken by another program; choose a free port" ||
        return 1
    mkdir -p "$dir" || jeanus_fail "cannot create $dir" || return 1
    # A new session, from a subshell that exits at once: the server outlives this script, is
    # no child of it, and does not see the Ctrl-C meant for scripts/dev.
    (
        jeanus_close_inherited_fds
        exec </dev/null >>"$JEANUS_DATA_DIR/nats.log" 2>&1
        setsid "$jeanus_nats_bin" -a 127.0.0.1 -p "$port" -js -sd "$dir" -P "$pidfile" &
    )
    printf '%s\n' "$port" >"$portfile"
    jeanus_local_wait jeanus_nats_ready "$port" ||
        jeanus_fail "the project-local nats-server did not start; see $JEANUS_DATA_DIR/nats.log" ||
        return 1
    NATS_URL=nats://127.0.0.1:$port
    jeanus_say "NATS: started the project-local server on 127.0.0.1:$port ($dir)"
}

jeanus_nats_up() {
    local address info standard_port=${JEANUS_NATS_PORT:-4222}
    if [[ -n ${NATS_URL:-} ]]; then
        address=$(jeanus_url_address "${NATS_URL%%,*}")
        jeanus_split_address "$address" 4222
        info=$(jeanus_nats_info "$jeanus_host" "$jeanus_port") ||
            jeanus_fail "NATS_URL: no NATS server answers at $jeanus_host:$jeanus_port" || return 1
        jeanus_nats_has_jetstream "$info" ||
            jeanus_fail "NATS_URL: the NATS server at $jeanus_host:$jeanus_port does not have JetStream enabled (start it with -js)" ||
            return 1
        jeanus_say "NATS: using NATS_URL ($(jeanus_url_redacted "$NATS_URL"))"
        return 0
    fi
    if info=$(jeanus_nats_info 127.0.0.1 "$standard_port"); then
        if jeanus_nats_has_jetstream "$info"; then
            NATS_URL=nats://127.0.0.1:$standard_port
            jeanus_say "NATS: using the server on 127.0.0.1:$standard_port ($NATS_URL)"
            return 0
        fi
        jeanus_say "NATS: the server on 127.0.0.1:$standard_port has no JetStream; using a project-local server instead"
    fi
    jeanus_nats_local
}

# --- Redis --------------------------------------------------------------------------------

# Splits a Redis URL (redis://[<user>][:<password>@]<host>[:<port>][/<database>]) into the
# globals jeanus_redis_user, jeanus_redis_password (both decoded) and jeanus_redis_database.
jeanus_redis_split_url() {
    local rest=${1#*://} authority userinfo=
    authority=${rest%%[/?#]*}
    rest=${rest#"$authority"}
    if [[ $authority == *@* ]]; then userinfo=${authority%@*}; fi
    jeanus_redis_user=${userinfo%%:*}
    jeanus_redis_password=
    if [[ $userinfo == *:* ]]; then jeanus_redis_password=${userinfo#*:}; fi
    jeanus_redis_user=${jeanus_redis_user//\\/\\\\}
    jeanus_redis_user=$(printf '%b' "${jeanus_redis_user//%/\\x}")
    jeanus_redis_password=${jeanus_redis_password//\\/\\\\}
    jeanus_redis_password=$(printf '%b' "${jeanus_redis_password//%/\\x}")
    jeanus_redis_database=${rest#/}
    jeanus_redis_database=${jeanus_redis_database%%[?#]*}
}

# Whether a Redis server without a password answers PING on host port.
jeanus_redis_ready() {
    jeanus_redis_ping "$1" "$2" && [[ $jeanus_redis_reply == +PONG ]]
}

jeanus_redis_local() {
    local dir=$JEANUS_DATA_DIR/redis port=${JEANUS_LOCAL_REDIS_PORT:-63799} running
    local pidfile=$JEANUS_DATA_DIR/redis/redis.pid portfile=$JEANUS_DATA_DIR/redis/redis.port
    if running=$(jeanus_local_running "$pidfile" "$portfile" jeanus_redis_ready); then
        REDIS_URL=redis://127.0.0.1:$running
        jeanus_say "Redis: reusing the project-local server on 127.0.0.1:$running ($dir)"
        return 0
    fi
    if ! jeanus_find_redis_server; then
        jeanus_apt_install redis-server || return 1
        jeanus_find_redis_server || jeanus_fail "no redis-server found after installing redis-server" || return 1
    fi
    ! jeanus_tcp_open 127.0.0.1 "$port" ||
        jeanus_fail "JEANUS_LOCAL_REDIS_PORT: port 127.0.0.1:$port is taken by another program; choose a free port" ||
        return 1
    mkdir -p "$dir" || jeanus_fail "cannot create $dir" || return 1
    rm -f "$pidfile"
    # Nothing is persisted: the rate limiter's windows may be lost with the server. Redis
    # daemonizes itself (a new session, stdio on /dev/null), so it outlives this script and
    # does not see the Ctrl-C meant for scripts/dev; the subshell first closes the descriptors
    # the daemon would otherwise inherit (our lock among them).
    (
        jeanus_close_inherited_fds
        # shellcheck disable=SC2094 # the log is only appended to, by us and by redis-server
        cd "$dir" &&
            exec "$jeanus_redis_bin" --bind 127.0.0.1 --port "$port" --daemonize yes \
                --pidfile "$pidfile" --logfile "$dir/redis.log" --dir "$dir" \
                --save "" --appendonly no --maxmemory-policy noeviction \
                </dev/null >>"$dir/redis.log" 2>&1
    ) || jeanus_fail "the project-local redis-server did not start; see $dir/redis.log" || return 1
    printf '%s\n' "$port" >"$portfile"
    jeanus_local_wait jeanus_redis_ready "$port" ||
        jeanus_fail "the project-local redis-server did not start; see $dir/redis.log" ||
        return 1
    REDIS_URL=redis://127.0.0.1:$port
    jeanus_say "Redis: started the project-local server on 127.0.0.1:$port ($dir)"
}

jeanus_redis_up() {
    local address path why standard_port=${JEANUS_REDIS_PORT:-6379}
    if [[ -n ${REDIS_URL:-} ]]; then
        case $REDIS_URL in
        redis://* | rediss://*) ;;
        unix://* | redis+unix://*)
            # A Unix socket is beyond bash's /dev/tcp: it must exist, the api tells the rest.
            path=${REDIS_URL#*://}
            path=${path%%[?#]*}
            [[ -S $path ]] || jeanus_fail "REDIS_URL: no Unix socket at $path for Redis" || return 1
            jeanus_say "Redis: using REDIS_URL (the socket $path)"
            return 0
            ;;
        *)
            jeanus_fail "REDIS_URL: not a redis://, rediss:// or redis+unix:// URL"
            return 1
            ;;
        esac
        address=$(jeanus_url_address "$REDIS_URL")
        jeanus_split_address "$address" 6379
        if [[ $REDIS_URL == rediss://* ]]; then
            # TLS is beyond bash's /dev/tcp: only check that something listens there.
            jeanus_tcp_open "$jeanus_host" "$jeanus_port" ||
                jeanus_fail "REDIS_URL: nothing answers at $jeanus_host:$jeanus_port" || return 1
        else
            jeanus_redis_split_url "$REDIS_URL"
            jeanus_redis_ping "$jeanus_host" "$jeanus_port" "$jeanus_redis_user" "$jeanus_redis_password" \
                "$jeanus_redis_database" ||
                jeanus_fail "REDIS_URL: no Redis server answers at $jeanus_host:$jeanus_port" || return 1
            case $jeanus_redis_reply in
            +PONG) ;;
            -NOAUTH*)
                jeanus_fail "REDIS_URL: the Redis at $jeanus_host:$jeanus_port requires a password, and REDIS_URL has none (redis://:<password>@…)"
                return 1
                ;;
            *)
                jeanus_fail "REDIS_URL: the Redis at $jeanus_host:$jeanus_port answers: ${jeanus_redis_reply#-}"
                return 1
                ;;
            esac
        fi
        jeanus_say "Redis: using REDIS_URL ($(jeanus_url_redacted "$REDIS_URL"))"
        return 0
    fi
    if jeanus_redis_ping 127.0.0.1 "$standard_port"; then
        if [[ $jeanus_redis_reply == +PONG ]]; then
            REDIS_URL=redis://127.0.0.1:$standard_port
            jeanus_say "Redis: using the server on 127.0.0.1:$standard_port ($REDIS_URL)"
            return 0
        fi
        # A Redis is there, but it wants a password (-NOAUTH) or is not ready: as for a
        # PostgreSQL that refuses user postgres, take a project-local one rather than fail;
        # REDIS_URL, with the password, chooses that server instead.
        why="answers: ${jeanus_redis_reply#-}"
        if [[ $jeanus_redis_reply == -NOAUTH* ]]; then why="requires a password"; fi
        jeanus_say "Redis: the server on 127.0.0.1:$standard_port $why; using a project-local server instead (set REDIS_URL to use it)"
    fi
    jeanus_redis_local
}

# --- entry points -------------------------------------------------------------------------

# Makes the three servers available and exports DATABASE_URL, NATS_URL and REDIS_URL.
jeanus_services_up() {
    local status=0
    JEANUS_DB_NAME=${JEANUS_DB_NAME:-jeanus_dev}
    JEANUS_DATA_DIR=${JEANUS_DATA_DIR:-$jeanus_root/.data}
    mkdir -p "$JEANUS_DATA_DIR" || jeanus_fail "cannot create $JEANUS_DATA_DIR" || return 1
    # Two scripts started together must not both initialise or start the local servers.
    if command -v flock >/dev/null; then
        exec {jeanus_lock_fd}>>"$JEANUS_DATA_DIR/.lock"
        flock -w 300 "$jeanus_lock_fd" || status=1
    fi
    if ((status == 1)); then
        jeanus_fail "timed out waiting for $JEANUS_DATA_DIR/.lock (held by another run of these scripts)"
    else
        jeanus_pg_up && jeanus_nats_up && jeanus_redis_up || status=1
    fi
    if [[ -n ${jeanus_lock_fd:-} ]]; then
        exec {jeanus_lock_fd}>&-
        unset jeanus_lock_fd
    fi
    ((status == 0)) || return 1
    export DATABASE_URL NATS_URL REDIS_URL
}

# Stops the project-local servers, if running; never touches any other server.
jeanus_services_stop() {
    local pid attempt
    JEANUS_DATA_DIR=${JEANUS_DATA_DIR:-$jeanus_root/.data}
    if [[ -f $JEANUS_DATA_DIR/postgres/data/postmaster.pid ]] && jeanus_find_pg_server; then
        jeanus_pg_owner=$(stat -c %U "$JEANUS_DATA_DIR/postgres/data")
        jeanus_as_pg_owner "$jeanus_pg_bindir/pg_ctl" stop -D "$JEANUS_DATA_DIR/postgres/data" -m fast >/dev/null &&
            jeanus_say "PostgreSQL: stopped the project-local server"
    fi
    if [[ -f $JEANUS_DATA_DIR/nats.pid ]]; then
        pid=$(<"$JEANUS_DATA_DIR/nats.pid")
        if [[ $pid =~ ^[0-9]+$ ]] && kill "$pid" 2>/dev/null; then
            jeanus_say "NATS: stopped the project-local server"
        fi
        rm -f "$JEANUS_DATA_DIR/nats.pid"
    fi
    if [[ -f $JEANUS_DATA_DIR/redis/redis.pid ]]; then
        pid=$(<"$JEANUS_DATA_DIR/redis/redis.pid")
        # Only a redis-server: after a reboot, the pid may be another program's.
        if [[ $pid =~ ^[0-9]+$ && $(cat "/proc/$pid/comm" 2>/dev/null) == redis* ]] &&
            kill "$pid" 2>/dev/null; then
            for ((attempt = 0; attempt < 50; attempt++)); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
            done
            jeanus_say "Redis: stopped the project-local server"
        fi
        rm -f "$JEANUS_DATA_DIR/redis/redis.pid" "$JEANUS_DATA_DIR/redis/redis.port"
    fi
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    set -euo pipefail
    case ${1:-up} in
    up)
        jeanus_load_dotenv
        jeanus_services_up
        printf 'export DATABASE_URL=%q\nexport NATS_URL=%q\nexport REDIS_URL=%q\n' \
            "$DATABASE_URL" "$NATS_URL" "$REDIS_URL"
        ;;
    stop) jeanus_services_stop ;;
    *)
        printf 'usage: %s [up|stop]\n' "$0" >&2
        exit 2
        ;;
    esac
fi
