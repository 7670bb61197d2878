-- A reconnect storm for benchmarks/storm.py: POSTs the requests in $STORM_FILE (one per line:
-- "<op>\t<X-Frp-Reqid>\t<body>") in order, as frps does, each connection sending its next one as
-- soon as its answer is in. Prints STORMSTART once loaded and STORMDONE at the $STORM_TOTAL-th
-- answer (storm.py times the two lines and then stops wrk), and a JSON summary at the end.
dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "wrk_summary.lua")
local requests = {}
local total = tonumber(os.getenv("STORM_TOTAL"))
local answered, rejected, i = 0, 0, 0

function init(args)
  for line in io.lines(os.getenv("STORM_FILE")) do
    local op, reqid, body = line:match("^([^\t]+)\t([^\t]+)\t(.*)$")
    requests[#requests + 1] = wrk.format("POST", "/handler?op=" .. op .. "&version=0.1.0", {
      ["User-Agent"] = "Go-http-client/1.1",
      ["Content-Type"] = "application/json",
      ["X-Frp-Reqid"] = reqid,
      ["Accept-Encoding"] = "gzip",
    }, body)
  end
  io.write("STORMSTART ", #requests, "\n")
  io.flush()
end

function request()
  -- Past the end (connections still busy while the last answers come in), the storm starts over;
  -- those few repeats are answered after the clock has stopped or instead of the last originals.
  i = i % #requests + 1
  return requests[i]
end

function response(status, headers, body)
  answered = answered + 1
  if body:find('"reject":true', 1, true) then
    rejected = rejected + 1
  end
  if answered == total then
    io.write("STORMDONE ", answered, " ", rejected, "\n")
    io.flush()
    wrk.thread:stop()
  end
end
