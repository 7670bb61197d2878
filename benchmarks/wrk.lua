-- POSTs the body in $WRK_BODY_FILE as frps does, and prints one JSON summary line at the end.
dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "wrk_summary.lua")
local f = assert(io.open(os.getenv("WRK_BODY_FILE"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
-- $WRK_DELAY_MS: each connection waits this long before its next request (a steady, partial load).
local pause = tonumber(os.getenv("WRK_DELAY_MS") or "")
if pause then
  function delay() return pause end
end
