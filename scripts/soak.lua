-- soak.lua: the wrk script of scripts/soak_test.py.
--   SOAK_TEXTS=texts.txt SOAK_IDS=2000 wrk -s scripts/soak.lua http://127.0.0.1:PORT
-- Each connection cycles through a mix of the routes users call:
--   /embed (TEI), /v1/embeddings (OpenAI), POST /items (upsert a text item
--   with an id from a bounded set, so the store stops growing), GET
--   /items/{id}, POST /similar (by text) and /health.
-- done() prints one machine-readable RESULT line; any status other than
-- 200, any socket error or timeout is an error.

local function json_string(s)
  local escaped = s:gsub('[%c"\\]', function(c)
    if c == '"' then return '\\"' end
    if c == '\\' then return '\\\\' end
    return string.format('\\u%04x', c:byte())
  end)
  return '"' .. escaped .. '"'
end

local path = os.getenv("SOAK_TEXTS")
assert(path, "set SOAK_TEXTS to a file with one text per line")
local texts = {}
for line in io.lines(path) do
  texts[#texts + 1] = json_string(line)
end
assert(#texts > 0, path .. " has no lines")
local n_ids = tonumber(os.getenv("SOAK_IDS") or "2000")

local json = { ["Content-Type"] = "application/json" }
local kinds = { "embed", "openai", "upsert", "get", "similar", "embed", "upsert", "health" }

local thread_no = 0
function setup(thread)
  thread:set("first", thread_no * 7919)
  thread_no = thread_no + 1
end

local i = 0
local statuses = {}
function init(args)
  i = tonumber(first) or 0
end

function request()
  i = i + 1
  local text = texts[i % #texts + 1]
  local kind = kinds[i % #kinds + 1]
  local id = (i * 2654435761) % n_ids
  if kind == "embed" then
    return wrk.format("POST", "/embed", json, '{"inputs":' .. text .. '}')
  elseif kind == "openai" then
    return wrk.format("POST", "/v1/embeddings", json,
                      '{"input":[' .. text .. '],"model":"embedd"}')
  elseif kind == "upsert" then
    return wrk.format("POST", "/items", json,
                      '{"items":[{"id":"s' .. id .. '","text":' .. text ..
                      ',"payload":{"n":' .. i .. '}}]}')
  elseif kind == "get" then
    return wrk.format("GET", "/items/s" .. id, nil, nil)
  elseif kind == "similar" then
    return wrk.format("POST", "/similar", json, '{"text":' .. text .. ',"limit":5}')
  else
    return wrk.format("GET", "/health", nil, nil)
  end
end

-- The first few non-200 answers of each thread, for the log (the store is
-- filled with every id before the run, so a GET never misses).
local bad = 0
function response(status, headers, body)
  if status ~= 200 then
    bad = bad + 1
    if bad <= 3 then
      io.stderr:write("soak: status " .. status .. ": " .. string.sub(body, 1, 200) .. "\n")
    end
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d duration_us=%d p50_us=%d p99_us=%d max_us=%d " ..
    "non2xx=%d connect_err=%d read_err=%d write_err=%d timeouts=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.max, e.status, e.connect, e.read, e.write, e.timeout))
end
