# Starts real S3 servers on 127.0.0.1 for tests and benchmarks. Source it, then call
# start_seaweedfs / start_rclone; stop_s3_servers runs from the caller's EXIT trap.
# Each server gets fresh random credentials and its own directory under $S3_WORK_DIR.

: "${S3_WORK_DIR:?set S3_WORK_DIR to a temporary directory}"
S3_TOOLS="${S3_TOOLS:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/.tools/venv/bin}"
S3_SERVER_PIDS=()

free_port() {
  # Below the kernel's ephemeral range (client connections take ports from it, and one could
  # take this port before the server binds it), and low enough for SeaweedFS's gRPC port,
  # port+10000, to exist below it too.
  python3 -c 'import random,socket
low=int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
top=max(low-1,25000)-10000
while True:
    p=random.randint(10000,top)
    try:
        for q in (p,p+10000):
            s=socket.socket(); s.bind(("127.0.0.1",q)); s.close()
        print(p); break
    except OSError: pass'
}

random_secret() { python3 -c 'import secrets; print(secrets.token_hex('"$1"'))'; }

wait_for_http() {
  local url=$1 name=$2 log=$3
  for _ in $(seq 1 120); do
    curl -s -o /dev/null "$url" && return 0
    sleep 0.25
  done
  echo "$name did not start; its log:" >&2
  tail -n 50 "$log" >&2
  return 1
}

# start_seaweedfs NAME: exports NAME_ENDPOINT, NAME_ACCESS_KEY, NAME_SECRET_KEY, NAME_PID.
start_seaweedfs() {
  local name=$1 dir="$S3_WORK_DIR/$1"
  mkdir -p "$dir/data"
  local access_key="AK$(random_secret 8)" secret_key
  secret_key=$(random_secret 20)
  cat >"$dir/identities.json" <<JSON
{"identities":[{"name":"test","credentials":[{"accessKey":"$access_key","secretKey":"$secret_key"}],"actions":["Admin","Read","List","Tagging","Write"]}]}
JSON
  # Every bucket gets volumes of its own, and by default their number follows the free disk
  # space divided by 128 MB: small volumes and an explicit cap let a test run make hundreds
  # of buckets even on a machine with little free disk.
  local s3_port master_port volume_port filer_port admin_port
  s3_port=$(free_port); master_port=$(free_port); volume_port=$(free_port)
  filer_port=$(free_port); admin_port=$(free_port)
  "$S3_TOOLS/weed" mini -dir="$dir/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 -master.telemetry=false \
    -s3.config="$dir/identities.json" -s3.port="$s3_port" -s3.port.iceberg=0 -s3.port.lance=0 \
    -master.port="$master_port" -volume.port="$volume_port" -filer.port="$filer_port" \
    -admin.port="$admin_port" -webdav=false -admin.ui=false \
    -master.volumeSizeLimitMB=32 -volume.max=1000 >"$dir/server.log" 2>&1 &
  local pid=$!
  S3_SERVER_PIDS+=("$pid")
  wait_for_http "http://127.0.0.1:$s3_port/" "SeaweedFS" "$dir/server.log"
  export "${name}_ENDPOINT=http://127.0.0.1:$s3_port" "${name}_ACCESS_KEY=$access_key" \
         "${name}_SECRET_KEY=$secret_key" "${name}_PID=$pid"
}

# start_rclone NAME: the same exports, for `rclone serve s3` over a plain directory.
start_rclone() {
  local name=$1 dir="$S3_WORK_DIR/$1"
  mkdir -p "$dir/data"
  local access_key="AK$(random_secret 8)" secret_key port
  secret_key=$(random_secret 20)
  port=$(free_port)
  "$S3_TOOLS/rclone" serve s3 --addr "127.0.0.1:$port" --auth-key "$access_key,$secret_key" \
    --config /dev/null "$dir/data" >"$dir/server.log" 2>&1 &
  local pid=$!
  S3_SERVER_PIDS+=("$pid")
  wait_for_http "http://127.0.0.1:$port/" "rclone" "$dir/server.log"
  export "${name}_ENDPOINT=http://127.0.0.1:$port" "${name}_ACCESS_KEY=$access_key" \
         "${name}_SECRET_KEY=$secret_key" "${name}_PID=$pid"
}

stop_s3_servers() {
  local pid
  for pid in "${S3_SERVER_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${S3_SERVER_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  S3_SERVER_PIDS=()
}
