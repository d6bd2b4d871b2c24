-- missing_macros.lua: an MTA that sends no macros at all, an unknown client
-- address family and no HELO (Postfix non_smtpd_milters, other MTAs): the
-- message is still filtered and the reference id falls back to "unknown".
-- Run by test_milter.py with MILTER_SOCKET set to the milter's socket.
conn = mt.connect(os.getenv("MILTER_SOCKET"), 40, 0.25)
if conn == nil then error("cannot connect to " .. tostring(os.getenv("MILTER_SOCKET"))) end

if mt.conninfo(conn, nil, "unspec") ~= nil then error("conninfo failed") end
if mt.getreply(conn) ~= SMFIR_CONTINUE then error("connect: not continue") end
-- no HELO, no macros
if mt.mailfrom(conn, "<>") ~= nil then error("mailfrom failed") end
if mt.rcptto(conn, "<x@example.test>") ~= nil then error("rcptto failed") end
if mt.header(conn, "Subject", "rejectme without macros") ~= nil then error("header failed") end
if mt.eoh(conn) ~= nil then error("eoh failed") end
if mt.bodystring(conn, "no macros here\r\n") ~= nil then error("body failed") end
if mt.eom(conn) ~= nil then error("eom failed") end
if mt.getreply(conn) ~= SMFIR_REPLYCODE then error("eom: expected a reply code (reject)") end
if not mt.eom_check(conn, MT_SMTPREPLY, "550", "5.7.1", "Message rejected as spam, score 25.0 (ref unknown)") then
	error("eom: not our 550 5.7.1 text with ref unknown")
end

-- a second message without any header at all, and no body
if mt.mailfrom(conn, "<a@example.org>") ~= nil then error("mailfrom 2 failed") end
if mt.rcptto(conn, "<x@example.test>") ~= nil then error("rcptto 2 failed") end
if mt.eoh(conn) ~= nil then error("eoh 2 failed") end
if mt.eom(conn) ~= nil then error("eom 2 failed") end
local r = mt.getreply(conn)
if r ~= SMFIR_CONTINUE and r ~= SMFIR_ACCEPT then error("empty message: not accepted") end
if not mt.eom_check(conn, MT_HDRINSERT, "X-Spam-Flag", " NO") then error("empty message: no X-Spam-Flag: NO") end

mt.disconnect(conn)
