/*
 * test_bayes.c - filters/bayes.c: tokenizer (UTF-8, case folding, length
 * bounds, numbers, prefixes), the chi-square combining against values
 * computed independently, and the LMDB store in a temporary directory:
 * learn, classify, learn-twice refused, relearn, forget, export/import.
 */
#include "config.h"
#include "bayes.h"
#include "mime.h"
#include "buf.h"
#include "util.h"
#include "t.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct toks {
	struct buf all;                 /* "tok\n" for each emitted token */
};

static void
collect(void *arg, const char *tok, size_t len)
{
	struct toks *t = arg;
	buf_add(&t->all, tok, len);
	buf_addc(&t->all, '\n');
}

static bool
has_tok(struct toks *t, const char *tok)
{
	struct buf want = BUF_INIT;
	bool r;

	buf_printf(&want, "\n%s\n", tok);
	r = (t->all.len >= want.len - 1 && strncmp(t->all.data, want.data + 1, want.len - 1) == 0) ||
	    (t->all.data && strstr(t->all.data, want.data) != NULL);
	buf_free(&want);
	return r;
}

static struct mime_msg *
msg(const char *text)
{
	return mime_parse(text, strlen(text), NULL, NULL);
}

static void
tokens_of(const char *text, struct toks *t)
{
	struct mime_msg *m = msg(text);
	buf_reset(&t->all);
	bayes_tokenize(m, collect, t);
	mime_free(&m);
}

#define NEAR(a, b) (fabs((a) - (b)) < 1e-12)

int
main(void)
{
	struct toks t = { BUF_INIT };
	char out[128];
	size_t n;

	mime_init();

	/* ---- folding ---- */
	n = bayes_fold("HeLLo", 5, out, sizeof(out));
	is_str(out, "hello", "ASCII folded");
	is_int(n, 5, "length");
	bayes_fold("ÉCOLE Straße ÀÖØ", strlen("ÉCOLE Straße ÀÖØ"), out, sizeof(out));
	is_str(out, "école straße àöø", "Latin-1 folded");
	bayes_fold("ŁÓDŹ ПРИВЕТ ΑΘΗΝΑ", strlen("ŁÓDŹ ПРИВЕТ ΑΘΗΝΑ"), out, sizeof(out));
	is_str(out, "łódź привет αθηνα", "Latin Extended-A, Cyrillic, Greek folded");
	bayes_fold("ab\xff\xfe" "cd", 6, out, sizeof(out));
	is_str(out, "abcd", "invalid UTF-8 bytes dropped");
	n = bayes_fold("ABCDEFGHIJ", 10, out, 6);
	ok(n < 6 && strlen(out) == n, "bounded output (%zu)", n);

	/* ---- tokenizer ---- */
	tokens_of("Subject: Cheap VIAGRA now\nFrom: Bob <bob@Example.COM>\n"
	    "X-Spam-Status: Yes, score=10\nContent-Type: text/plain; charset=utf-8\n\n"
	    "Hello WORLD, 12345 and 3.14 ab x supercalifragilisticexpialidociousandevenlongerwordhere "
	    "Grüße ÜBER don't visit http://WWW.Shop.Example.co.uk/buy now\n", &t);
	ok(has_tok(&t, "s:cheap") && has_tok(&t, "s:viagra"), "Subject words prefixed s: and folded");
	ok(has_tok(&t, "s:cheap viagra"), "Subject word pairs");
	ok(has_tok(&t, "f:bob@example.com"), "From address as one token, folded");
	ok(has_tok(&t, "hello") && has_tok(&t, "world"), "body words folded");
	ok(!has_tok(&t, "hello world"), "no word pairs in the body (tokenizer 3)");
	ok(!has_tok(&t, "12345") && !has_tok(&t, "3.14"), "pure numbers skipped");
	ok(!has_tok(&t, "ab") && !has_tok(&t, "x"), "short words skipped");
	ok(has_tok(&t, "sk:s5"), "overlong word as sk:<first><len/10>");
	ok(has_tok(&t, "grüße") && has_tok(&t, "über"), "UTF-8 words, Latin-1 folding");
	ok(has_tok(&t, "don't"), "inner apostrophe kept");
	ok(has_tok(&t, "u:www.shop.example.co.uk") && has_tok(&t, "u:example.co.uk") &&
	    has_tok(&t, "u:co.uk"), "URL host and parent domains");
	ok(has_tok(&t, "H:subject") && has_tok(&t, "H:from"), "header presence tokens");
	ok(!has_tok(&t, "H:x-spam-status") && !strstr(t.all.data, "score"),
	    "other filters' X-Spam headers ignored");
	ok(has_tok(&t, "p:text/plain"), "text part type token");
	tokens_of("Subject: att\nContent-Type: multipart/mixed; boundary=b\n\n--b\n"
	    "Content-Type: text/plain\n\nsee attached\n--b\nContent-Type: application/zip\n"
	    "Content-Disposition: attachment; filename=\"Invoice.ZIP\"\n"
	    "Content-Transfer-Encoding: base64\n\nUEsDBA==\n--b--\n", &t);
	ok(has_tok(&t, "a:application/zip") && has_tok(&t, "ae:zip"), "attachment type and extension");
	/* tokenizer 2: capitals, URL paths, Message-ID shape, more headers */
	tokens_of("Subject: one two three four five. Visit now\nMessage-ID: <20261123.AbC99x@mail.example>\n"
	    "Content-Transfer-Encoding: 8bit\nPrecedence: bulk\n\n"
	    "one two three four five. Visit http://shop.example/Buy-Now/cheap.php?id=77 FREE offer\n", &t);
	ok(has_tok(&t, "s:one two") && has_tok(&t, "s:two three") && has_tok(&t, "s:visit now"),
	    "adjacent pairs in the Subject");
	ok(!has_tok(&t, "s:five visit"), "pairs stop at a full stop");
	ok(!has_tok(&t, "one two") && has_tok(&t, "one") && has_tok(&t, "two"), "body: words alone");
	ok(has_tok(&t, "C:FREE") && has_tok(&t, "free") && !has_tok(&t, "C:offer"),
	    "all-capitals variant of a capitalised word");
	ok(has_tok(&t, "up:buy-now") && has_tok(&t, "up:cheap.php"), "URL path words");
	ok(has_tok(&t, "mids:9.AaA9a"), "Message-ID shape");
	ok(has_tok(&t, "pr:bulk"), "Precedence");
	tokens_of("Received: from a.example by b.example\nReceived: from c.example by d.example\n"
	    "Received: from e.example\nReceived: from f.example\nReceived: from g.example\n"
	    "X-Campaign-Tag: Spring Sale\nSubject: MP3 ABC\n\nBody MP3 Xy\n", &t);
	ok(has_tok(&t, "r:a.example") && has_tok(&t, "r:g.example"), "Received lines past the third");
	ok(has_tok(&t, "x:spring") && has_tok(&t, "x:sale") && has_tok(&t, "H:x-campaign-tag"),
	    "other headers' words prefixed x:");
	ok(!has_tok(&t, "C:MP3") && !has_tok(&t, "C:Xy") && !has_tok(&t, "s:C:ABC"),
	    "no capitals variant for digits, mixed case or headers");
	is_int(bayes_hash("abc", 3), bayes_hash("abc", 3), "hash is stable");
	ok(bayes_hash("abc", 3) != bayes_hash("abd", 3), "hash differs");

	/* ---- combining: constants computed with Python (math module):
	 *   chi2Q(x2, v) = exp(-m) * sum_{i<v/2} m^i/i!, m = x2/2
	 *   combine(f) = (1 + S - H)/2, S = 1 - chi2Q(-2 sum ln(1-f), 2n),
	 *                H = 1 - chi2Q(-2 sum ln f, 2n)
	 *   f(w) = (s*x + n*p)/(s + n), p = (sp/ns) / (sp/ns + hm/nh) */
	ok(NEAR(bayes_chi2q(10.0, 6), 0.12465201948308113), "chi2Q(10, 6)");
	ok(NEAR(bayes_chi2q(2.0, 2), 0.36787944117144233), "chi2Q(2, 2) = e^-1");
	ok(NEAR(bayes_chi2q(30.0, 20), 0.06985366069940976), "chi2Q(30, 20)");
	{
		double a[] = { 0.99, 0.98, 0.2 }, b[] = { 0.01, 0.05, 0.3, 0.6 }, c[] = { 0.5 };
		double d[10];
		for (int i = 0; i < 10; i++)
			d[i] = 0.9;
		ok(NEAR(bayes_combine(a, 3), 0.8826911778324582), "combine {0.99, 0.98, 0.2}");
		ok(NEAR(bayes_combine(b, 4), 0.03177809127468978), "combine {0.01, 0.05, 0.3, 0.6}");
		ok(NEAR(bayes_combine(c, 1), 0.5), "combine {0.5}");
		ok(NEAR(bayes_combine(d, 10), 0.9996034323940555), "combine 10 x 0.9");
		ok(NEAR(bayes_combine(NULL, 0), 0.5), "no tokens: 0.5");
	}
	{
		/* log-odds: expected values from Python's decimal module at 80
		 * digits (the same formulas, no floating-point shortcut); beyond
		 * the point where prob rounds to 1 they keep growing */
		double a[] = { 0.99, 0.98, 0.2 }, s3[25], s4[25], h3[25], mix[28], lo = 0, lo2 = 0;
		for (int i = 0; i < 25; i++) {
			s3[i] = 0.999;
			s4[i] = 0.9999;
			h3[i] = 0.001;
			mix[i] = 0.99;
		}
		mix[25] = mix[26] = mix[27] = 0.01;
		bayes_combine_ex(a, 3, &lo);
		ok(fabs(lo - 2.018165434325) < 1e-9, "log-odds {0.99, 0.98, 0.2}: %.12f", lo);
		ok(bayes_combine_ex(s3, 25, &lo) == 1.0 && fabs(lo - 104.386702672378) < 1e-8,
		    "25 x 0.999: prob rounds to 1, log-odds %.12f", lo);
		ok(bayes_combine_ex(s4, 25, &lo2) == 1.0 && fabs(lo2 - 155.086008360663) < 1e-8 && lo2 > lo,
		    "25 x 0.9999: still ranked above (%.12f)", lo2);
		bayes_combine_ex(h3, 25, &lo2);
		ok(fabs(lo2 + 104.386702672378) < 1e-8, "25 x 0.001: the mirror image (%.12f)", lo2);
		bayes_combine_ex(mix, 28, &lo);
		ok(fabs(lo - 7.983992154591) < 1e-9, "25 x 0.99 + 3 x 0.01: %.12f", lo);
		bayes_combine_ex(NULL, 0, &lo);
		ok(lo == 0, "no tokens: log-odds 0");
	}
	ok(NEAR(bayes_token_prob(10, 2, 100, 200, 0.1, 0.5), 0.9057099924868521), "f(w) 10 spam 2 ham");
	ok(NEAR(bayes_token_prob(0, 3, 50, 80, 0.1, 0.5), 0.016129032258064516), "f(w) ham only");
	ok(NEAR(bayes_token_prob(0, 0, 50, 80, 0.1, 0.5), 0.5), "unknown token: x");
	is_str(bayes_band_name(bayes_band_of(0.0)), "BAYES_00", "band 0.0");
	is_str(bayes_band_name(bayes_band_of(0.5)), "BAYES_50", "band 0.5");
	is_str(bayes_band_name(bayes_band_of(0.995)), "BAYES_99", "band 0.995");
	is_str(bayes_band_name(bayes_band_of(0.9995)), "BAYES_999", "band 0.9995");
	{
		struct bayes_params p;
		char *err = NULL;
		bayes_params_default(&p);
		ok(bayes_params_parse(&p, "s=0.3,max_tokens=40", &err) == 0 && p.s == 0.3 &&
		    p.max_tokens == 40, "params parsed");
		ok(bayes_params_parse(&p, "bogus=1", &err) < 0 && err, "bad parameter refused");
		free(err);
	}

	/* ---- store ---- */
	{
		char dir[] = "/tmp/test_bayes.XXXXXX";
		char *err = NULL, cmd[256];
		struct bayes *b;
		struct bayes_result r;
		struct bayes_stats st;
		struct bayes_params p;
		uint8_t d[BAYES_DIGEST_LEN], d2[BAYES_DIGEST_LEN];
		static const char *spam[] = {
			"Subject: cheap pills\n\nbuy cheap pills online viagra discount pharmacy\n",
			"Subject: pills discount\n\ncheap viagra online pharmacy order now discount\n",
			"Subject: online pharmacy\n\nviagra cialis cheap discount order pills today\n",
		};
		static const char *ham[] = {
			"Subject: meeting notes\n\nthe project meeting is moved to thursday agenda attached\n",
			"Subject: agenda\n\nplease review the agenda for the project meeting thursday\n",
			"Subject: lunch\n\nproject review after lunch on thursday with the team\n",
		};
		const char *ts = "Subject: discount pills\n\ncheap viagra pharmacy discount online\n";
		const char *th = "Subject: project\n\nthe meeting agenda for thursday project review\n";
		struct mime_msg *m;

		ok(mkdtemp(dir) != NULL, "temp dir");
		ok(bayes_open(dir, true, &err) == NULL && err, "read-only open of a missing store fails");
		free(err);
		err = NULL;
		b = bayes_open(dir, false, &err);
		ok(b != NULL, "store created (%s)", err ? err : "ok");
		if (b == NULL)
			return t_done();
		bayes_params_default(&p);
		p.min_learned = 1;
		bayes_set_params(b, &p);
		for (int i = 0; i < 3; i++) {
			m = msg(spam[i]);
			bayes_digest(spam[i], strlen(spam[i]), d);
			is_int(bayes_learn(b, m, true, d), BAYES_OK, "learn spam %d", i);
			mime_free(&m);
			m = msg(ham[i]);
			bayes_digest(ham[i], strlen(ham[i]), d);
			is_int(bayes_learn(b, m, false, d), BAYES_OK, "learn ham %d", i);
			mime_free(&m);
		}
		m = msg(spam[0]);
		bayes_digest(spam[0], strlen(spam[0]), d);
		is_int(bayes_learn(b, m, true, d), BAYES_ALREADY, "the same message twice: refused");
		mime_free(&m);
		{
			/* the same message relayed again: new Received line, same digest */
			const char *again = "Received: from relay.example\nSubject: cheap pills\n\n"
			    "buy cheap pills online viagra discount pharmacy\n";
			const char *other = "Subject: cheap pills\n\nbuy cheap pills online viagra pharmacy\n";
			bayes_digest(again, strlen(again), d2);
			ok(memcmp(d, d2, sizeof(d)) == 0, "relayed again (new Received line): same digest");
			bayes_digest(other, strlen(other), d2);
			ok(memcmp(d, d2, sizeof(d)) != 0, "another body: another digest");
		}
		ok(bayes_stats(b, &st) == 0 && st.nspam == 3 && st.nham == 3 && st.nseen == 6 &&
		    st.ntokens > 20, "stats: 3 spam, 3 ham, 6 digests, %llu tokens",
		    (unsigned long long)st.ntokens);

		m = msg(ts);
		ok(bayes_classify(b, m, &r) == 0 && r.prob > 0.9, "spammy message: %.4f %s", r.prob, r.symbol);
		ok(r.ready && r.ntop > 0 && r.ntop <= BAYES_TOP, "top tokens reported (%u)", r.ntop);
		mime_free(&m);
		m = msg(th);
		ok(bayes_classify(b, m, &r) == 0 && r.prob < 0.1, "hammy message: %.4f %s", r.prob, r.symbol);
		mime_free(&m);

		/* forget undoes learn */
		m = msg(spam[2]);
		bayes_digest(spam[2], strlen(spam[2]), d);
		is_int(bayes_forget(b, m, 0, d), BAYES_NOT_LEARNED, "forget as ham what was spam: refused");
		is_int(bayes_forget(b, m, 1, d), BAYES_OK, "forget spam");
		is_int(bayes_forget(b, m, 1, d), BAYES_NOT_LEARNED, "forget twice: not learned");
		ok(bayes_stats(b, &st) == 0 && st.nspam == 2 && st.nseen == 5, "counts after forget");
		/* relearn as the other class */
		is_int(bayes_learn(b, m, false, d), BAYES_OK, "learn as ham");
		is_int(bayes_learn(b, m, true, d), BAYES_OK, "relearn as spam");
		ok(bayes_stats(b, &st) == 0 && st.nspam == 3 && st.nham == 3, "relearn moved the counts");
		mime_free(&m);

		/* batch */
		ok(bayes_batch_begin(b) == 0, "batch begin");
		m = msg("Subject: batch one\n\nbatched message body words\n");
		bayes_digest("batch1", 6, d);
		is_int(bayes_learn(b, m, false, d), BAYES_OK, "learn in a batch");
		mime_free(&m);
		ok(bayes_batch_end(b, false) == 0 && bayes_stats(b, &st) == 0 && st.nham == 3,
		    "aborted batch leaves nothing");

		/* export / import round trip */
		{
			char path[512], dir2[sizeof(dir) + 8];
			struct bayes *b2;
			struct bayes_result r2;
			FILE *f;

			snprintf(path, sizeof(path), "%s/dump.txt", dir);
			f = fopen(path, "w+");
			ok(f && bayes_export(b, f) == 0, "export");
			rewind(f);
			snprintf(dir2, sizeof(dir2), "%s/b2", dir);
			b2 = bayes_open(dir2, false, &err);
			ok(b2 && bayes_import(b2, f, &err) == 0, "import (%s)", err ? err : "ok");
			fclose(f);
			bayes_set_params(b2, &p);
			m = msg(ts);
			ok(bayes_classify(b, m, &r) == 0 && bayes_classify(b2, m, &r2) == 0 &&
			    r.prob == r2.prob && r2.nspam == 3, "same result after the round trip");
			bayes_digest(spam[0], strlen(spam[0]), d);
			mime_free(&m);
			m = msg(spam[0]);
			is_int(bayes_learn(b2, m, true, d), BAYES_ALREADY, "digests travel with the dump");
			mime_free(&m);
			f = tmpfile();
			fputs("moat-bayes 1\nt zz 1 2 3\n", f);
			rewind(f);
			free(err);
			err = NULL;
			ok(bayes_import(b2, f, &err) < 0 && err && strstr(err, "line 2"), "bad dump refused: %s",
			    err ? err : "");
			free(err);
			fclose(f);
			bayes_close(&b2);
		}
		/*
		 * The per-thread read cache: a second handle on the same store
		 * (as the CLI beside the daemon) must see what the first one
		 * learns after it cached the old counts; and cached answers must
		 * equal uncached ones (inside a batch, classify reads through
		 * the write transaction and never the cache).
		 */
		{
			char *e2 = NULL;
			struct bayes *b3 = bayes_open(dir, true, &e2);
			struct bayes_result r3, r4;
			const char *probe = "Subject: zebra quokka\n\nzebra quokka narwhal okapi\n";
			bool same = true, ordered = true;
			int learned = 0;

			ok(b3 != NULL, "second handle (%s)", e2 ? e2 : "ok");
			free(e2);
			if (b3) {
				bayes_set_params(b3, &p);
				m = msg(probe);
				ok(bayes_classify(b3, m, &r3) == 0 && r3.nused == 0,
				    "unknown words: no clues (%u)", r3.nused);
				ok(bayes_classify(b3, m, &r3) == 0 && r3.nused == 0, "again, from the cache");
				mime_free(&m);
				for (int i = 0; i < 4; i++) {
					char body[160];
					snprintf(body, sizeof(body), "Subject: zebra %d\n\nzebra quokka narwhal okapi spam%d\n", i, i);
					m = msg(body);
					bayes_digest(body, strlen(body), d);
					learned += bayes_learn(b, m, true, d) == BAYES_OK;
					mime_free(&m);
				}
				m = msg(probe);
				ok(learned == 4 && bayes_classify(b3, m, &r3) == 0 && r3.nused > 0 &&
				    r3.prob > 0.9, "learned through the other handle: seen at once (%.4f, %u clues)",
				    r3.prob, r3.nused);
				ok(bayes_classify(b, m, &r4) == 0 && r4.prob == r3.prob,
				    "both handles agree (%.4f %.4f)", r4.prob, r3.prob);
				mime_free(&m);
				bayes_close(&b3);
			}
			/* cached vs uncached on every message learned so far */
			const char *all[] = { spam[0], spam[1], spam[2], ham[0], ham[1], ham[2], ts, th, probe };
			bool plain = true;
			for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) {
				struct bayes_result r5;
				m = msg(all[i]);
				/* r3 explained from the cache, r4 explained from the
				 * write txn, r5 plain (no texts) from the cache */
				if (bayes_classify(b, m, &r5) != 0 || bayes_classify_explain(b, m, &r3) != 0 ||
				    bayes_batch_begin(b) != 0 || bayes_classify_explain(b, m, &r4) != 0 ||
				    bayes_batch_end(b, false) != 0 || r3.prob != r4.prob ||
				    r3.lodds != r4.lodds || r3.nused != r4.nused || r3.ntop != r4.ntop)
					same = false;
				for (unsigned k = 0; same && k < r3.ntop; k++)
					if (strcmp(r3.top[k].text, r4.top[k].text) != 0 || r3.top[k].text[0] == '\0' ||
					    r3.top[k].spam != r4.top[k].spam || r3.top[k].ham != r4.top[k].ham)
						same = false;
				if (r5.prob != r3.prob || r5.lodds != r3.lodds || r5.ntop != r3.ntop)
					plain = false;
				for (unsigned k = 0; plain && k < r5.ntop; k++)
					if (r5.top[k].text[0] != '\0' || r5.top[k].prob != r3.top[k].prob ||
					    r5.top[k].spam != r3.top[k].spam || r5.top[k].ham != r3.top[k].ham)
						plain = false;
				for (unsigned k = 1; k < r3.ntop; k++)
					if (fabs(r3.top[k].prob - 0.5) > fabs(r3.top[k - 1].prob - 0.5))
						ordered = false;
				mime_free(&m);
			}
			ok(same, "cached lookups give what the store gives");
			ok(plain, "without texts: the same clues in the same order");
			/* max_tokens 0 (all clues: collected, then qsort) against the
			 * default 25 (kept in order while scanning): these messages
			 * have fewer than 25 clues, so both must agree exactly */
			{
				struct bayes_params p0 = p;
				bool agree = true;
				unsigned most = 0;
				p0.max_tokens = 0;
				for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) {
					struct bayes_result ra, rb;
					m = msg(all[i]);
					bayes_set_params(b, &p);
					if (bayes_classify_explain(b, m, &ra) != 0)
						agree = false;
					bayes_set_params(b, &p0);
					if (bayes_classify_explain(b, m, &rb) != 0)
						agree = false;
					if (ra.nused > most)
						most = ra.nused;
					if (ra.prob != rb.prob || ra.lodds != rb.lodds || ra.nused != rb.nused ||
					    ra.ntop != rb.ntop)
						agree = false;
					for (unsigned k = 0; agree && k < ra.ntop; k++)
						if (strcmp(ra.top[k].text, rb.top[k].text) != 0)
							agree = false;
					mime_free(&m);
				}
				bayes_set_params(b, &p);
				ok(agree && most > 1 && most < 25,
				    "max_tokens 0 (sorted at the end) = 25 (kept while scanning), up to %u clues", most);
			}
			ok(ordered, "top tokens most extreme first");
		}
		ok(bayes_expire(b, time(NULL) + 10, 1) > 0, "expire drops tokens seen once");
		bayes_close(&b);
		ok(b == NULL, "closed");
		snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
		if (system(cmd) != 0)
			printf("# could not remove %s\n", dir);
	}
	buf_free(&t.all);
	return t_done();
}
