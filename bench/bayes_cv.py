#!/usr/bin/env python3
"""bayes_cv.py - k-fold cross-validation of moat's Bayes against bogofilter
and SpamAssassin's Bayes on ../shared/corpus (run by bench/bayes-bench.sh).

Messages are de-duplicated by the corpus index's dup_group (one message per
group), then each group goes to fold int(sha256("SEED:group"), 16) % K, so a
fixed seed gives fixed splits.  For each fold every tool is trained on the
other folds and classifies this one; the scores of all folds are pooled for
FP rate, FN rate (at each tool's own cut-off), ROC AUC and the false
negatives at the threshold that gives <= 0.1% false positives.

  bayes_cv.py --moat BUILDDIR/moat [--tools moat,bogofilter,spamassassin]
              [--folds 5] [--seed 1] [--jobs 2] [--sa-sample N] [--limit N] [--work DIR]
              [--moat-params "SET;SET..."] [--dump FILE]

SpamAssassin learns at ~50 messages/s: its steps run after the others,
--jobs N (default 2) at a time, its speed taken from its own processes' CPU
time.  --sa-sample N: SpamAssassin is instead trained on N random messages
of each training set and tests N/4 of each test fold (quicker); moat and
bogofilter are then also reported on exactly that subsample.

moat's score is its log-odds (the fourth field of `moat bayes classify`),
which keeps ranking messages whose probability has rounded to 0 or 1;
MOAT_RANK=prob ranks by the printed probability instead.  SpamAssassin's
is its bayes_score at full double precision (not the 4-place BAYES tag),
bogofilter's its spamicity with 13 significant digits (not 6).

--moat-params "max_tokens=25;min_dev=0.3,x=0.55": after training, moat
classifies every fold once more per set (MOAT_BAYES_PARAMS, no retraining),
reported as moat[SET]: for tuning (use another --seed than the one reported).
--dump FILE: every score as "TOOL VARIANT FOLD SCORE IS_SPAM FILE".
"""
import argparse
import concurrent.futures
import math
import hashlib
import os
import random
import resource
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SA_RULES = "/usr/share/spamassassin"
CORPUS = os.path.abspath(os.path.join(HERE, "..", "..", "shared", "corpus"))


def load(limit):
    seen, msgs = set(), []
    for corpus in sorted(os.listdir(CORPUS)):
        idx = os.path.join(CORPUS, corpus, "index.tsv")
        if not os.path.exists(idx):
            continue
        for line in open(idx):
            if line.startswith("#"):
                continue
            f = line.rstrip("\n").split("\t")
            label, path, group = f[0], f[1], f[4]
            if group in seen:
                continue
            seen.add(group)
            msgs.append((os.path.join(CORPUS, corpus, path), label == "spam", group))
    if limit:
        random.Random(7).shuffle(msgs)
        msgs = msgs[:limit]
    return msgs


def fold_of(seed, group, k):
    return int(hashlib.sha256(("%s:%s" % (seed, group)).encode()).hexdigest()[:8], 16) % k


def chunks(lst, n):
    for i in range(0, len(lst), n):
        yield lst[i:i + n]


# ---- tools: train(workdir, spam_files, ham_files); classify(files) -> {file: prob}


class Moat:
    name = "moat"

    def __init__(self, exe, work):
        self.exe, self.work = exe, work
        self.state = os.path.join(work, "state")
        os.makedirs(self.state, exist_ok=True)
        self.conf = os.path.join(work, "moat.conf")
        with open(self.conf, "w") as f:
            f.write("hostname bench.moat.test\nstate-dir %s\n" % self.state)

    def _dir(self, name, files):
        d = os.path.join(self.work, name)
        os.makedirs(d, exist_ok=True)
        for i, p in enumerate(files):
            os.symlink(p, os.path.join(d, "%06d" % i))
        return d

    def train(self, spam, ham):
        # interleave so neither class is learned wholly first (order does
        # not matter to the counts, only to the batches)
        s, h = self._dir("spam", spam), self._dir("ham", ham)
        subprocess.run([self.exe, "-c", self.conf, "bayes", "train", "--spam", s, "--ham", h],
                       check=True, stdout=subprocess.DEVNULL)

    def classify(self, files, params=None):
        out = {}
        env = dict(os.environ)
        if params:
            env["MOAT_BAYES_PARAMS"] = params
        for ch in chunks(files, 500):
            r = subprocess.run([self.exe, "-c", self.conf, "bayes", "classify"] + ch + ["/dev/null"],
                               check=True, capture_output=True, text=True, env=env)
            for line in r.stdout.splitlines():
                # FILE PROB SYMBOL LOG-ODDS: the log-odds rank the messages
                # whose probability has rounded to 0 or 1 (MOAT_RANK=prob
                # ranks by the printed probability alone)
                p, prob, _, lodds = line.rsplit(" ", 3)
                out[p] = float(prob) if os.environ.get("MOAT_RANK") == "prob" else float(lodds)
        return out


class Bogofilter:
    name = "bogofilter"

    def __init__(self, work):
        self.db = os.path.join(work, "bogo")
        os.makedirs(self.db, exist_ok=True)

    def train(self, spam, ham):
        for ch in chunks(spam, 500):
            subprocess.run(["bogofilter", "-d", self.db, "-s", "-B"] + ch, check=True)
        for ch in chunks(ham, 500):
            subprocess.run(["bogofilter", "-d", self.db, "-n", "-B"] + ch, check=True)

    def classify(self, files):
        out = {}
        rx = re.compile(r"^(.*) X-Bogosity: \w+, tests=bogofilter, spamicity=([0-9.e+-]+)")
        for ch in chunks(files, 500):
            # 13 significant digits instead of the default %0.6f, which
            # ties every message above 0.9999995
            r = subprocess.run(["bogofilter", "-d", self.db, "-v", "-B",
                                "--spamicity-formats=%.12e,%.12e,%.12e"] + ch,
                               capture_output=True, text=True)
            for line in r.stdout.splitlines():
                m = rx.match(line)
                if m:
                    out[m.group(1)] = float(m.group(2))
        return out


SA_PERL = r'''
use strict; use warnings;
use Mail::SpamAssassin;
my ($mode, $dbdir, $cfdir) = splice(@ARGV, 0, 3);
my $sa = Mail::SpamAssassin->new({
    rules_filename => $cfdir, site_rules_filename => $cfdir,
    userprefs_filename => "$cfdir/user_prefs", dont_copy_prefs => 1,
    local_tests_only => 1,
    post_config_text => "bayes_path $dbdir/bayes\nuse_bayes 1\nbayes_auto_learn 0\n"
        . "bayes_min_ham_num 1\nbayes_min_spam_num 1\nuse_auto_whitelist 0\n",
});
$sa->init(1);
my $n = 0;
while (my $line = <STDIN>) {
    chomp $line;
    my ($cls, $file) = split / /, $line, 2;
    open(my $fh, "<", $file) or next;
    my @lines = <$fh>; close $fh;
    my $mail = $sa->parse(\@lines);
    if ($mode eq "learn") {
        my $st = $sa->learn($mail, undef, $cls eq "s" ? 1 : 0, 0);
        $st->finish;
    } else {
        my $st = $sa->check($mail);
        # the probability at full precision (the BAYES tag rounds to 4
        # places, which would tie messages SpamAssassin itself tells apart)
        my $p = defined $st->{bayes_score} ? sprintf("%.17g", $st->{bayes_score})
                                            : $st->get_tag("BAYES");
        print "$file $p\n";
        $st->finish;
    }
    $mail->finish;
}
if ($mode eq "learn") { $sa->rebuild_learner_caches(); $sa->finish_learner(); }
my ($u, $sy) = times();
print STDERR "cpu-seconds ", $u + $sy, "\n";
'''


class SpamAssassin:
    name = "spamassassin"

    def __init__(self, work):
        self.work = work
        self.db = os.path.join(work, "sa-db")
        self.cf = os.path.join(work, "sa-cf")
        os.makedirs(self.db, exist_ok=True)
        os.makedirs(self.cf, exist_ok=True)
        # only the Bayes rules: the plugin, its rules and scores
        with open(os.path.join(self.cf, "init.pre"), "w") as f:
            f.write("loadplugin Mail::SpamAssassin::Plugin::Check\n"
                    "loadplugin Mail::SpamAssassin::Plugin::Bayes\n")
        # the shipped BAYES_* rules and the TLD list the parser needs
        for cf in ("20_aux_tlds.cf", "23_bayes.cf"):
            shutil.copy(os.path.join(SA_RULES, cf), self.cf)
        open(os.path.join(self.cf, "user_prefs"), "w").close()
        self.script = os.path.join(work, "sa.pl")
        with open(self.script, "w") as f:
            f.write(SA_PERL)

    def _run(self, mode, lines):
        r = subprocess.run(["perl", self.script, mode, self.db, self.cf],
                           input="".join(lines), capture_output=True, text=True, check=True)
        # the Perl process's own CPU time: SpamAssassin's folds run in
        # parallel (--jobs), where the children's rusage would mix them
        m = re.search(r"^cpu-seconds ([0-9.]+)$", r.stderr, re.M)
        self.cpu = float(m.group(1)) if m else 0.0
        return r

    def train(self, spam, ham):
        lines = ["s %s\n" % p for p in spam] + ["h %s\n" % p for p in ham]
        random.Random(3).shuffle(lines)
        self._run("learn", lines)

    def classify(self, files):
        r = self._run("check", ["x %s\n" % p for p in files])
        out = {}
        for line in r.stdout.splitlines():
            p, prob = line.rsplit(" ", 1)
            try:
                out[p] = float(prob)
            except ValueError:
                pass
        return out


def sa_bayes_rules():
    # the BAYES_* rules as SpamAssassin ships them (23_bayes.cf), scores of 50_scores.cf
    bands = [("00", 0, 0.01), ("05", 0.01, 0.05), ("20", 0.05, 0.20), ("40", 0.20, 0.40),
             ("50", 0.40, 0.60), ("60", 0.60, 0.80), ("80", 0.80, 0.95), ("95", 0.95, 0.99),
             ("99", 0.99, 1.00), ("999", 0.999, 1.00)]
    out = []
    for n, lo, hi in bands:
        out.append("body BAYES_%s eval:check_bayes('%s', '%s')\n" % (n, lo, hi))
        out.append("tflags BAYES_%s learn\n" % n)
    return "".join(out)


# ---- metrics ----

def auc(scores):
    """ROC AUC from [(score, is_spam)] (ties count one half)"""
    pos = sum(1 for _, y in scores if y)
    neg = len(scores) - pos
    if not pos or not neg:
        return float("nan")
    srt = sorted(scores, key=lambda t: t[0])
    rank_sum, i = 0.0, 0
    while i < len(srt):
        j = i
        while j < len(srt) and srt[j][0] == srt[i][0]:
            j += 1
        avg = (i + j + 1) / 2.0
        rank_sum += avg * sum(1 for k in range(i, j) if srt[k][1])
        i = j
    return (rank_sum - pos * (pos + 1) / 2.0) / (pos * neg)


def fn_at_fp(scores, fp_rate=0.001):
    """the lowest cut-off with FP <= fp_rate of the ham; FN rate above it"""
    hams = sorted((s for s, y in scores if not y), reverse=True)
    spams = [s for s, y in scores if y]
    allowed = int(fp_rate * len(hams))
    # spam must score strictly above the (allowed+1)-th highest ham
    cut = hams[allowed] if allowed < len(hams) else -1
    fn = sum(1 for s in spams if s <= cut)
    return fn / len(spams), fn, cut


def rates(scores, cut):
    hams = [s for s, y in scores if not y]
    spams = [s for s, y in scores if y]
    fp = sum(1 for s in hams if s >= cut)
    fn = sum(1 for s in spams if s < cut)
    return fp / len(hams), fn / len(spams), fp, fn


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--moat", required=True)
    ap.add_argument("--tools", default="moat,bogofilter,spamassassin")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", default="1")
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--sa-sample", type=int, default=0)
    ap.add_argument("--only-fold", type=int, default=-1)
    ap.add_argument("--jobs", type=int, default=2,
                    help="SpamAssassin steps run at once (each one Perl process)")
    ap.add_argument("--work")
    ap.add_argument("--moat-params", default="",
                    help="';'-separated MOAT_BAYES_PARAMS sets: moat classifies each fold "
                    "once more per set (reported as moat[SET]); for tuning")
    ap.add_argument("--dump", help="write every score as TOOL VARIANT FOLD SCORE LABEL FILE")
    a = ap.parse_args()
    tools = a.tools.split(",")
    msgs = load(a.limit)
    nspam = sum(1 for m in msgs if m[1])
    print("# corpus %s: %d messages after de-duplication (%d spam, %d ham), %d folds, seed %s"
          % (CORPUS, len(msgs), nspam, len(msgs) - nspam, a.folds, a.seed), flush=True)
    work = a.work or tempfile.mkdtemp(prefix="bayes-bench-")
    label = {p: s for p, s, _ in msgs}
    extra = ["moat[%s]" % ps for ps in a.moat_params.split(";") if ps] if "moat" in tools else []
    scores = {t: [] for t in tools + extra}
    sub_scores = {t: [] for t in tools + extra}
    dump = open(a.dump, "w") if a.dump else None
    timing = {}

    def cpu():
        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        return r.ru_utime + r.ru_stime
    # moat's scores are log-odds (ln(p/(1-p))): its usual cut 0.9 is ln 9
    cuts = {"moat": 0.9 if os.environ.get("MOAT_RANK") == "prob" else math.log(9.0),
            "bogofilter": 0.99, "spamassassin": 0.9}
    lock = threading.Lock()

    def step(k, t, vname, tr, te):
        """train tool t on tr, classify te; record scores and timing"""
        d = os.path.join(work, "f%d-%s-%s" % (k, t, vname))
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        tool = Moat(a.moat, d) if t == "moat" else Bogofilter(d) if t == "bogofilter" else SpamAssassin(d)
        spam = [p for p, s, _ in tr if s]
        ham = [p for p, s, _ in tr if not s]
        c0, t0 = cpu(), time.time()
        tool.train(spam, ham)
        c1, t1 = cpu(), time.time()
        ctrain = tool.cpu if t == "spamassassin" else c1 - c0
        files = [p for p, _, _ in te]
        res = tool.classify(files)
        c2, t2 = cpu(), time.time()
        cclass = tool.cpu if t == "spamassassin" else c2 - c1
        runs = [(t, res)]
        if t == "moat":
            runs += [(e, tool.classify(files, e[5:-1])) for e in extra]
        with lock:
            tm = timing.setdefault((t, vname), [0.0, 0.0, 0, 0.0, 0.0, 0])
            tm[0] += t1 - t0
            tm[1] += ctrain
            tm[2] += len(tr)
            tm[3] += t2 - t1
            tm[4] += cclass
            tm[5] += len(te)
            missing = 0
            for tn, rs in runs:
                dst = scores[tn] if vname == "full" else sub_scores[tn]
                for p in files:
                    if p not in rs:
                        missing += 1
                    dst.append((rs.get(p, 0.5), label[p]))
                    if dump:
                        dump.write("%s %s %d %.6f %d %s\n" % (tn, vname, k, rs.get(p, 0.5),
                                                             label[p], p))
            print("# fold %d %-12s %-4s train %5d in %6.1fs, classify %5d in %6.1fs%s"
                  % (k, t, vname, len(tr), t1 - t0, len(te), t2 - t1,
                     ", %d unscored" % missing if missing else ""), flush=True)
        shutil.rmtree(d, ignore_errors=True)

    # moat and bogofilter one step at a time (their timing is the point);
    # SpamAssassin's steps afterwards, --jobs at once (it learns at ~50
    # messages/s: the whole corpus takes ~12 CPU minutes)
    serial, parallel = [], []
    for k in range(a.folds):
        if a.only_fold >= 0 and k != a.only_fold:
            continue
        test = [m for m in msgs if fold_of(a.seed, m[2], a.folds) == k]
        train = [m for m in msgs if fold_of(a.seed, m[2], a.folds) != k]
        rnd = random.Random("%s:%d" % (a.seed, k))
        if a.sa_sample:
            sub_train = rnd.sample(train, min(a.sa_sample, len(train)))
            sub_test = rnd.sample(test, min(a.sa_sample // 4, len(test)))
        for t in tools:
            variants = [("full", train, test)] if t != "spamassassin" else []
            if a.sa_sample:
                variants.append(("sub", sub_train, sub_test))
            elif t == "spamassassin":
                variants.append(("full", train, test))
            for vname, tr, te in variants:
                (parallel if t == "spamassassin" else serial).append((k, t, vname, tr, te))
    for job in serial:
        step(*job)
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, a.jobs)) as ex:
        for f in [ex.submit(step, *job) for job in parallel]:
            f.result()

    def table(title, sc, vname):
        print("\n%s" % title)
        print("%-13s %6s %7s %7s %9s %11s %16s %16s" % ("tool", "cut", "FP%", "FN%", "ROC AUC",
              "FN%@0.1%FP", "train msg/s", "classify msg/s"))
        print("%-13s %6s %7s %7s %9s %11s %16s %16s" % ("", "", "", "", "", "", "wall (cpu)", "wall (cpu)"))
        for t in tools + extra:
            s = sc[t]
            if not s:
                continue
            fp, fn, _, _ = rates(s, cuts[t.split("[")[0]])
            fz, nfn, cut = fn_at_fp(s)
            tm = timing.get((t, vname))
            sp = lambda n, w, c: "%7.0f (%6.0f)" % (n / w if w else 0, n / c if c else 0)
            tr = sp(tm[2], tm[0], tm[1]) if tm else "-"
            cl = sp(tm[5], tm[3], tm[4]) if tm else "-"
            print("%-13s %6.3f %7.3f %7.3f %9.5f %7.3f (%2d) %16s %16s" % (
                t, cuts[t.split("[")[0]], 100 * fp, 100 * fn, auc(s), 100 * fz, nfn, tr, cl))
    table("all messages, %d-fold (FP/FN at each tool's usual cut-off; FN%%@0.1%%FP with the count)"
          % a.folds, scores, "full")
    if a.sa_sample:
        n = len(sub_scores[tools[0]])
        table("subsample: %d training messages per fold, %d test messages in all (same splits for all)"
              % (a.sa_sample, n), sub_scores, "sub")


if __name__ == "__main__":
    main()
