-- bench_http.lua: the wrk script of scripts/bench_http.sh.
--   BENCH_TEXTS=texts.txt wrk -s scripts/bench_http.lua http://127.0.0.1:PORT/embed
-- Each request POSTs one line of BENCH_TEXTS as {"inputs": "..."}, cycling
-- through the file (each wrk thread starts at a different line). done()
-- prints one machine-readable RESULT line.

local function json_string(s)
  local escaped = s:gsub('[%c"\\]', function(c)
    if c == '"' then return '\\"' end
    if c == '\\' then return '\\\\' end
    return string.format('\\u%04x', c:byte())
  end)
  return '"' .. escaped .. '"'
end

local path = os.getenv("BENCH_TEXTS")
assert(path, "set BENCH_TEXTS to a file with one text per line")
local bodies = {}
for line in io.lines(path) do
  bodies[#bodies + 1] = '{"inputs":' .. json_string(line) .. '}'
end
assert(#bodies > 0, path .. " has no lines")

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

local thread_no = 0
function setup(thread)
  thread:set("first", thread_no * 7919)
  thread_no = thread_no + 1
end

local next_index = 0
function init(args)
  next_index = tonumber(first) or 0
end

function request()
  local body = bodies[next_index % #bodies + 1]
  next_index = next_index + 1
  return wrk.format(nil, nil, nil, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d duration_us=%d p50_us=%d p99_us=%d mean_us=%.0f " ..
    "non2xx=%d connect_err=%d read_err=%d write_err=%d timeouts=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.mean, e.status, e.connect, e.read, e.write, e.timeout))
end
