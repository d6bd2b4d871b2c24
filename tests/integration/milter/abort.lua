-- abort.lua: a transaction aborted in the middle of the body (RSET, or the
-- client went away) leaves nothing behind: the next message on the same
-- connection is judged on its own.
conn = mt.connect(os.getenv("MILTER_SOCKET"), 40, 0.25)
if conn == nil then error("cannot connect") end
if mt.conninfo(conn, "client.example", "192.0.2.12") ~= nil then error("conninfo failed") end
if mt.helo(conn, "client.example") ~= nil then error("helo failed") end

mt.macro(conn, SMFIC_MAIL, "i", "ABORT1")
if mt.mailfrom(conn, "<a@example.org>") ~= nil then error("mailfrom failed") end
if mt.rcptto(conn, "<x@example.test>") ~= nil then error("rcptto failed") end
if mt.header(conn, "Subject", "rejectme") ~= nil then error("header failed") end
if mt.eoh(conn) ~= nil then error("eoh failed") end
if mt.bodystring(conn, "half a body\r\n") ~= nil then error("body failed") end
if mt.abort(conn) ~= nil then error("abort failed") end

-- aborted before any header this time
mt.macro(conn, SMFIC_MAIL, "i", "ABORT2")
if mt.mailfrom(conn, "<b@example.org>") ~= nil then error("mailfrom 2 failed") end
if mt.rcptto(conn, "<y@example.test>") ~= nil then error("rcptto 2 failed") end
if mt.abort(conn) ~= nil then error("abort 2 failed") end

mt.macro(conn, SMFIC_MAIL, "i", "ABORT3")
if mt.mailfrom(conn, "<c@example.org>") ~= nil then error("mailfrom 3 failed") end
if mt.rcptto(conn, "<z@example.test>") ~= nil then error("rcptto 3 failed") end
if mt.header(conn, "Subject", "lunch") ~= nil then error("header 3 failed") end
if mt.eoh(conn) ~= nil then error("eoh 3 failed") end
if mt.bodystring(conn, "see you\r\n") ~= nil then error("body 3 failed") end
if mt.eom(conn) ~= nil then error("eom 3 failed") end
local r = mt.getreply(conn)
if r ~= SMFIR_CONTINUE and r ~= SMFIR_ACCEPT then error("the message after the aborts is not accepted: " .. tostring(r)) end
if not mt.eom_check(conn, MT_HDRINSERT, "X-Spam-Flag", " NO") then error("after the aborts: no X-Spam-Flag: NO") end
local status = mt.getheader(conn, "X-Spam-Status", 0)
if status == nil or string.find(status, "REJECTME", 1, true) then
	error("after the aborts: the aborted message's rule leaked into X-Spam-Status: " .. tostring(status))
end

-- abort, then an abrupt disconnect in the middle of a body
mt.macro(conn, SMFIC_MAIL, "i", "ABORT4")
if mt.mailfrom(conn, "<d@example.org>") ~= nil then error("mailfrom 4 failed") end
if mt.rcptto(conn, "<z@example.test>") ~= nil then error("rcptto 4 failed") end
if mt.header(conn, "Subject", "gone") ~= nil then error("header 4 failed") end
if mt.eoh(conn) ~= nil then error("eoh 4 failed") end
if mt.bodystring(conn, "and then the MTA went away") ~= nil then error("body 4 failed") end
mt.disconnect(conn, false)
