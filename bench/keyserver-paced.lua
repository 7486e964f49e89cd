-- wrk script for bench/keyserver.sh: each connection waits PACED_DELAY_MS (default 10)
-- after each answer, so C connections offer about C * 1000 / (delay + latency) requests/s
-- (23 connections x 10 ms: about 2,000/s). wrk reports the rate it achieved.
local pause = tonumber(os.getenv("PACED_DELAY_MS") or "10")

function delay()
  return pause
end
