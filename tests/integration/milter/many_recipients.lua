-- many_recipients.lua: 500 recipients for one message; the verdict comes
-- back and the headers are added (the recipients are kept, bounded by
-- smtp-max-recipients).
conn = mt.connect(os.getenv("MILTER_SOCKET"), 40, 0.25)
if conn == nil then error("cannot connect") end
if mt.conninfo(conn, "client.example", "192.0.2.10") ~= nil then error("conninfo failed") end
if mt.helo(conn, "client.example") ~= nil then error("helo failed") end
mt.macro(conn, SMFIC_MAIL, "i", "MANYRCPT1")
if mt.mailfrom(conn, "<a@example.org>") ~= nil then error("mailfrom failed") end
for i = 1, 500 do
	if mt.rcptto(conn, "<user" .. i .. "@example.test>") ~= nil then error("rcptto " .. i .. " failed") end
	if mt.getreply(conn) ~= SMFIR_CONTINUE then error("rcpt " .. i .. ": not continue") end
end
if mt.header(conn, "From", "a@example.org") ~= nil then error("header failed") end
if mt.header(conn, "Subject", "please tagme, all of you") ~= nil then error("header failed") end
if mt.eoh(conn) ~= nil then error("eoh failed") end
if mt.bodystring(conn, "hello everyone\r\n") ~= nil then error("body failed") end
if mt.eom(conn) ~= nil then error("eom failed") end
if not mt.eom_check(conn, MT_HDRINSERT, "X-Spam-Flag", " YES") then error("no X-Spam-Flag: YES") end
if not mt.eom_check(conn, MT_HDRCHANGE, "Subject", " [SPAM] please tagme, all of you") then
	error("no subject prefix")
end
mt.disconnect(conn)
