-- throughput.lua: 200 tagged messages back to back on one connection.  At
-- end of message the milter writes several replies in a row (the inserted
-- header fields, then continue); with Nagle's algorithm on, each batch
-- would wait for the MTA's delayed ACK (>= 40 ms on Linux), so 200 messages
-- would take more than 8 s.  test_milter.py times this script over TCP.
-- The no-reply steps are not offered and no macros are sent: miltertest
-- writes every command separately, and with them it would wait for our
-- delayed ACK itself (Postfix sends macros, a command and the headers
-- that need no reply in one write).
conn = mt.connect(os.getenv("MILTER_SOCKET"), 40, 0.25)
if conn == nil then error("cannot connect") end
-- steps the milter may switch off: SMFIP_NO* (0x7f), NOUNKNOWN, NODATA,
-- SKIP (0x700) and HDR_LEADSPC (0x100000), no SMFIP_NR_*; all actions.
-- (miltertest 1.4 sends its second argument as the steps, the third as the
-- actions.)
local err = mt.negotiate(conn, 6, 0x10077f, 0x1ff)
if err ~= nil then error("negotiate: " .. err) end
if mt.conninfo(conn, "client.example", "192.0.2.14") ~= nil then error("conninfo failed") end
if mt.helo(conn, "client.example") ~= nil then error("helo failed") end
for i = 1, 200 do
	if mt.mailfrom(conn, "<a@example.org>") ~= nil then error(i .. ": mailfrom failed") end
	if mt.rcptto(conn, "<x@example.test>") ~= nil then error(i .. ": rcptto failed") end
	if mt.header(conn, "Subject", "tagme " .. i) ~= nil then error(i .. ": header failed") end
	if mt.eoh(conn) ~= nil then error(i .. ": eoh failed") end
	if mt.bodystring(conn, "body " .. i .. "\r\n") ~= nil then error(i .. ": body failed") end
	if mt.eom(conn) ~= nil then error(i .. ": eom failed") end
	if not mt.eom_check(conn, MT_HDRINSERT, "X-Spam-Flag") then error(i .. ": not tagged") end
end
mt.disconnect(conn)
