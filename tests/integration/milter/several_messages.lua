-- several_messages.lua: one MTA connection carrying several messages, each
-- with its own verdict: tag (headers + subject prefix), reject (our 5.7.1
-- text, reference = the queue id macro), quarantine, a clean one, and a
-- tagged one that already has the subject prefix (not added twice).
conn = mt.connect(os.getenv("MILTER_SOCKET"), 40, 0.25)
if conn == nil then error("cannot connect") end
if mt.conninfo(conn, "client.example", "192.0.2.13") ~= nil then error("conninfo failed") end
mt.macro(conn, SMFIC_HELO, "{tls_version}", "TLSv1.3", "{cipher}", "TLS_AES_256_GCM_SHA384")
if mt.helo(conn, "client.example") ~= nil then error("helo failed") end

local function message(qid, subject)
	mt.macro(conn, SMFIC_MAIL, "i", qid, "{auth_authen}", "alice")
	if mt.mailfrom(conn, "<a@example.org>") ~= nil then error(qid .. ": mailfrom failed") end
	if mt.rcptto(conn, "<x@example.test>") ~= nil then error(qid .. ": rcptto failed") end
	if mt.header(conn, "From", "a@example.org") ~= nil then error(qid .. ": header failed") end
	if mt.header(conn, "Subject", subject) ~= nil then error(qid .. ": header failed") end
	if mt.eoh(conn) ~= nil then error(qid .. ": eoh failed") end
	if mt.bodystring(conn, "body of " .. qid .. "\r\n") ~= nil then error(qid .. ": body failed") end
	if mt.eom(conn) ~= nil then error(qid .. ": eom failed") end
end

message("MSG1", "tagme please")
if not mt.eom_check(conn, MT_HDRINSERT, "X-Spam-Flag", " YES") then error("MSG1: no X-Spam-Flag: YES") end
if not mt.eom_check(conn, MT_HDRCHANGE, "Subject", " [SPAM] tagme please") then error("MSG1: no subject prefix") end

message("MSG2", "rejectme please")
if mt.getreply(conn) ~= SMFIR_REPLYCODE then error("MSG2: not refused") end
if not mt.eom_check(conn, MT_SMTPREPLY, "550", "5.7.1", "Message rejected as spam, score 25.0 (ref MSG2)") then
	error("MSG2: not our 550 5.7.1 text with the queue id")
end

message("MSG3", "quarme please")
if not mt.eom_check(conn, MT_QUARANTINE) then error("MSG3: not quarantined") end
if not mt.eom_check(conn, MT_HDRINSERT, "X-Spam-Flag", " YES") then error("MSG3: no X-Spam-Flag: YES") end

message("MSG4", "lunch")
local r = mt.getreply(conn)
if r ~= SMFIR_CONTINUE and r ~= SMFIR_ACCEPT then error("MSG4: not accepted") end
if not mt.eom_check(conn, MT_HDRINSERT, "X-Spam-Flag", " NO") then error("MSG4: no X-Spam-Flag: NO") end
if mt.eom_check(conn, MT_HDRCHANGE, "Subject") then error("MSG4: subject changed") end

message("MSG5", "[SPAM] tagme again")
if not mt.eom_check(conn, MT_HDRINSERT, "X-Spam-Flag", " YES") then error("MSG5: no X-Spam-Flag: YES") end
if mt.eom_check(conn, MT_HDRCHANGE, "Subject") then error("MSG5: the prefix was added twice") end
mt.disconnect(conn)
