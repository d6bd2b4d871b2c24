-- large_body.lua: a body in many 64 KB chunks.  Under message-size-limit
-- (1M in test_milter.py) it is scanned whole - a rule hit in the last chunk
-- counts; over it, the message is refused with 552 5.3.4 and the memory
-- stays bounded.
conn = mt.connect(os.getenv("MILTER_SOCKET"), 40, 0.25)
if conn == nil then error("cannot connect") end
if mt.conninfo(conn, "client.example", "192.0.2.11") ~= nil then error("conninfo failed") end
if mt.helo(conn, "client.example") ~= nil then error("helo failed") end

local line = string.rep("x", 78) .. "\r\n"
local chunk = string.rep(line, 800)     -- 64000 bytes

-- 14 chunks = 896000 bytes: under the limit, accepted with the headers
mt.macro(conn, SMFIC_MAIL, "i", "LARGE1")
if mt.mailfrom(conn, "<a@example.org>") ~= nil then error("mailfrom failed") end
if mt.rcptto(conn, "<x@example.test>") ~= nil then error("rcptto failed") end
if mt.header(conn, "Subject", "big") ~= nil then error("header failed") end
if mt.eoh(conn) ~= nil then error("eoh failed") end
for i = 1, 14 do
	if mt.bodystring(conn, chunk) ~= nil then error("body chunk " .. i .. " failed") end
end
if mt.eom(conn) ~= nil then error("eom failed") end
local r = mt.getreply(conn)
if r ~= SMFIR_CONTINUE and r ~= SMFIR_ACCEPT then error("896000 bytes: not accepted") end
if not mt.eom_check(conn, MT_HDRINSERT, "X-Spam-Flag") then error("896000 bytes: no X-Spam-Flag") end

-- 40 chunks = 2.5 MB: over message-size-limit, refused
mt.macro(conn, SMFIC_MAIL, "i", "LARGE2")
if mt.mailfrom(conn, "<a@example.org>") ~= nil then error("mailfrom 2 failed") end
if mt.rcptto(conn, "<x@example.test>") ~= nil then error("rcptto 2 failed") end
if mt.header(conn, "Subject", "too big") ~= nil then error("header 2 failed") end
if mt.eoh(conn) ~= nil then error("eoh 2 failed") end
for i = 1, 40 do
	if mt.bodystring(conn, chunk) ~= nil then error("body chunk " .. i .. " failed") end
	local b = mt.getreply(conn)
	if b ~= SMFIR_CONTINUE and b ~= SMFIR_SKIP then error("body chunk " .. i .. ": unexpected reply") end
end
if mt.eom(conn) ~= nil then error("eom 2 failed") end
if not mt.eom_check(conn, MT_SMTPREPLY, "552", "5.3.4", "Message size exceeds the filter's limit") then
	error("2.5 MB: not refused with 552 5.3.4")
end
mt.disconnect(conn)
