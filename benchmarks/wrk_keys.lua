-- wrk script for http.sh: GET /r{i}/items/{id} over 10 routes, each request with an
-- x-api-key header cycling over KEYS (default 1,000) distinct keys. Requests are built
-- once in init(); done() prints one machine-readable RESULT line.

local counter = 0

function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
end

local reqs, n, i

function init(args)
  local keys = tonumber(os.getenv("KEYS") or "1000")
  local routes = tonumber(os.getenv("ROUTES") or "10")
  n = keys * 4
  reqs = {}
  for k = 0, n - 1 do
    local path = string.format("/r%d/items/%d", (k * 3 + math.floor(k / keys)) % routes,
                               (k * 7919) % 100000)
    local key = string.format("bench-key-%05d", k % keys)
    reqs[k + 1] = wrk.format("GET", path, { ["x-api-key"] = key })
  end
  i = (tid or 0) * 997
end

function request()
  i = i + 1
  return reqs[i % n + 1]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d duration_us=%d p50_us=%d p99_us=%d errors=%d non2xx=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, e.status))
end
