/*
 * attach.h - attachment policy over the parsed message (filters/mime.h):
 * dangerous file extensions, double extensions ("invoice.pdf.exe"),
 * right-to-left override tricks in names, executable content by magic
 * whatever the name says (PE, ELF, Mach-O, shebang scripts, LNK), and
 * archives (ZIP central directory, RAR 4/5 headers) holding such names.
 *
 * attach_check() is pure over the parsed message: no I/O, no globals, safe
 * from several threads at once.  It runs in pool threads at end of data.
 */
#ifndef MOAT_ATTACH_H
#define MOAT_ATTACH_H

#include <stdbool.h>
#include <stddef.h>

struct mime_msg;

/* ordered: a worse action has a larger value */
enum attach_action { ATTACH_ACCEPT = 0, ATTACH_QUARANTINE, ATTACH_REJECT };

enum attach_reason {
	ATTACH_R_EXTENSION,             /* blocked extension (detail: "exe") */
	ATTACH_R_DOUBLE_EXT,            /* "name.pdf.exe" (detail: "pdf.exe") */
	ATTACH_R_RTLO,                  /* U+202E and friends in the name */
	ATTACH_R_EXECUTABLE,            /* content magic (detail: "PE", "ELF", ...) */
	ATTACH_R_ARCHIVE_MEMBER,        /* an archive holds a blocked name (member set) */
	ATTACH_R_ENCRYPTED,             /* an encrypted archive (cannot be looked into) */
};

struct attach_conf {
	/* extension lists: lowercase, no dot, separated by spaces or commas;
	 * NULL for the defaults below */
	const char *block_ext;          /* -> ext_action */
	const char *quarantine_ext;     /* -> ATTACH_QUARANTINE (macro documents) */
	enum attach_action ext_action;
	enum attach_action double_ext_action;
	enum attach_action rtlo_action;
	enum attach_action exec_action; /* executable content under any name */
	enum attach_action archive_action;      /* blocked name inside an archive */
	enum attach_action encrypted_action;
	bool check_archives;
	unsigned max_archive_entries;   /* central directory entries looked at */
};

#define ATTACH_DEFAULT_BLOCK \
	"exe scr com pif bat cmd js jse vbs vbe wsf wsh wsc hta jar msi msp mst lnk " \
	"iso img vhd vhdx ps1 psm1 psd1 cpl reg scf inf sct msc gadget application " \
	"appref-ms chm hlp url xll dll sys drv ocx"
#define ATTACH_DEFAULT_QUARANTINE \
	"docm dotm xlsm xltm xlam xlsb pptm potm ppam ppsm sldm one onepkg"

#define ATTACH_CONF_DEFAULT { \
	.block_ext = NULL, .quarantine_ext = NULL, \
	.ext_action = ATTACH_REJECT, .double_ext_action = ATTACH_REJECT, \
	.rtlo_action = ATTACH_REJECT, .exec_action = ATTACH_REJECT, \
	.archive_action = ATTACH_REJECT, .encrypted_action = ATTACH_ACCEPT, \
	.check_archives = true, .max_archive_entries = 10000 }

#define ATTACH_MAX_FINDINGS 16
#define ATTACH_NAME_MAX     256

struct attach_finding {
	char               filename[ATTACH_NAME_MAX];   /* of the attachment (cut, UTF-8) */
	char               member[ATTACH_NAME_MAX];     /* inside an archive; "" if not */
	enum attach_reason reason;
	enum attach_action action;
	char               detail[32];
};

struct attach_result {
	enum attach_action    action;   /* the worst of the findings */
	size_t                nfindings;
	bool                  truncated;        /* more than ATTACH_MAX_FINDINGS */
	struct attach_finding f[ATTACH_MAX_FINDINGS];
};

/* conf may be NULL for the defaults; returns res->action */
enum attach_action attach_check(const struct attach_conf *, const struct mime_msg *,
    struct attach_result *res);

/* the parts, exposed for tests and other filters */
/* "PE", "ELF", "Mach-O", "script", "LNK", or NULL */
const char *attach_magic(const unsigned char *data, size_t len);
/* calls cb for each member name of a ZIP or RAR archive; returns the count,
 * -1 if data is not an archive; *encrypted set if any member is */
int attach_archive_names(const unsigned char *data, size_t len, unsigned max,
    void (*cb)(void *, const char *name, size_t len), void *arg, bool *encrypted);

const char *attach_reason_name(enum attach_reason);
const char *attach_action_name(enum attach_action);

#endif
