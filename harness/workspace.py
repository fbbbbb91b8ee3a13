"""The campaign's scaffold as its own git repository: main is the incumbent, cand/NNN the candidates.

Each round commits the researcher's proposal on a candidate branch `cand/NNN` made from main. Keep
fast-forwards main to it; revert leaves main alone and pins the candidate under
`refs/rejected/NNN` (with the reason as a git note), so no commit is ever lost. Between rounds the
work tree is clean on main. Every operation is idempotent, so a resumed campaign can repeat the
step it was killed in: apply finds its own commit again (the proposal's hash is a commit trailer),
keep and revert done twice change nothing.

A round of several candidates commits candidate k on `cand/NNN-k` (reverted as `refs/rejected/NNN-k`),
evaluates each from a snapshot of its commit (a detached `git worktree`, so they can run at once while
the work tree stays on main), and names the one it chose `cand/NNN`, which then goes the usual way.

    ws = Workspace.create("runs/demo", "arith")
    sha = ws.apply(1, proposal)      # cand/001
    ws.checkout(1); ...evaluate ws.path...; ws.checkout_main()
    ws.keep(1)                       # or ws.revert(1, "no better than noise")
    ws.apply(2, proposal_a, candidate=1); ws.apply(2, proposal_b, candidate=2)   # cand/002-1, cand/002-2
    with ws.snapshot(2, 1, "runs/demo/snapshots/002-1") as path: ...evaluate path...
    ws.choose(2, 1); ws.revert(2, "not the best", candidate=2); ws.keep(2)
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import git

from harness.proposal import Proposal, render
from rl_pipeline.files import remove_stale, replacing_dir
from rl_pipeline.scaffold import load_scaffold

SCAFFOLDS = Path(__file__).resolve().parents[1] / "scaffolds"
ACTOR = git.Actor("researcher", "researcher@localhost")
MAIN = "main"
NOTES_REF = "rejected"  # refs/notes/rejected: why each rejected candidate was reverted
_TRAILER = "Proposal-Sha256"


class WorkspaceError(RuntimeError):
    """A git operation that cannot be done in the workspace's current state; the message says why."""


def proposal_digest(proposal: Proposal) -> str:
    return hashlib.sha256(proposal.to_json().encode("utf-8")).hexdigest()


def _name(round_no: int, candidate: int | None = None) -> str:
    """NNN for a round's one candidate, NNN-k for candidate k of several."""
    if isinstance(round_no, bool) or not isinstance(round_no, int) or round_no < 0:
        raise WorkspaceError(f"round number must be a non-negative integer, got {round_no!r}")
    if candidate is not None and (isinstance(candidate, bool) or not isinstance(candidate, int) or candidate < 1):
        raise WorkspaceError(f"candidate number must be a positive integer, got {candidate!r}")
    return f"{round_no:03d}" if candidate is None else f"{round_no:03d}-{candidate}"


def _commit(repo: git.Repo, message: str) -> git.Commit:
    """Commit everything in the work tree with the fixed author; hooks never run in a campaign."""
    repo.git.add("--all")
    return repo.index.commit(message, author=ACTOR, committer=ACTOR, skip_hooks=True)


class Workspace:
    def __init__(self, repo: git.Repo):
        self.repo = repo

    # -----------------------------------------------------------------------------------------
    # creation

    @classmethod
    def create(cls, campaign_dir: str | Path, scaffold_src: str | Path) -> Workspace:
        """Copy a scaffold (a name under scaffolds/ or a folder) to `campaign_dir/scaffold` and commit
        it on main. The repo appears under its final name only once complete, so a crash leaves
        either nothing or a whole workspace."""
        src = Path(scaffold_src)
        if not src.is_dir():
            src = SCAFFOLDS / str(scaffold_src)
        load_scaffold(src, import_code=False)  # refuse a broken scaffold before copying anything
        campaign_dir = Path(campaign_dir)
        final = campaign_dir / "scaffold"
        if final.exists():
            raise WorkspaceError(f"{final} already exists; open it with Workspace.open")
        remove_stale(final)  # leftover of a create that was killed
        with replacing_dir(final, replace=False) as tmp:
            shutil.copytree(src, tmp, ignore=shutil.ignore_patterns(".git", "__pycache__", "*.pyc"),
                            dirs_exist_ok=True)
            repo = git.Repo.init(tmp, initial_branch=MAIN)
            with repo.config_writer() as config:
                config.set_value("user", "name", ACTOR.name)
                config.set_value("user", "email", ACTOR.email)
                config.set_value("commit", "gpgsign", "false")
            # Evaluating a scaffold imports its Python files; their bytecode must not make the tree dirty.
            (tmp / ".git" / "info").mkdir(exist_ok=True)
            (tmp / ".git" / "info" / "exclude").write_text("__pycache__/\n*.pyc\n")
            _commit(repo, f"Initial scaffold: {src.name}")
            repo.close()
        return cls.open(campaign_dir)

    @classmethod
    def open(cls, campaign_dir: str | Path) -> Workspace:
        path = Path(campaign_dir) / "scaffold"
        try:
            repo = git.Repo(path)
        except (git.InvalidGitRepositoryError, git.NoSuchPathError) as err:
            raise WorkspaceError(f"{path} is not a campaign workspace (no git repository)") from err
        if MAIN not in repo.heads:
            raise WorkspaceError(f"{path} has no {MAIN} branch")
        return cls(repo)

    def clear_stale_locks(self) -> list[Path]:
        """Remove the lock files a git killed mid-write left in the repository (`.git/index.lock` after a
        kill -9 of the campaign in a checkout, a ref's `.lock`, a snapshot worktree's), which make every
        later git command fail; return them. Only for a caller holding the campaign's lock: then no other
        git process can be working in this repository, so any lock file in it is stale."""
        stale = sorted(Path(self.repo.git_dir).rglob("*.lock"))
        for lock in stale:
            lock.unlink(missing_ok=True)
        return stale

    @property
    def path(self) -> Path:
        return Path(self.repo.working_tree_dir)

    # -----------------------------------------------------------------------------------------
    # looking up

    def incumbent_commit(self) -> str:
        return self.repo.heads[MAIN].commit.hexsha

    def candidate_commit(self, round_no: int, candidate: int | None = None) -> str | None:
        """The candidate commit of a round, or None when the round has not been applied."""
        branch = f"cand/{_name(round_no, candidate)}"
        return self.repo.heads[branch].commit.hexsha if branch in self.repo.heads else None

    def _candidate(self, round_no: int, candidate: int | None = None) -> git.Commit:
        sha = self.candidate_commit(round_no, candidate)
        if sha is None:
            raise WorkspaceError(f"round {round_no} has no candidate (branch cand/{_name(round_no, candidate)})")
        return self.repo.commit(sha)

    def _rejected(self, round_no: int, candidate: int | None = None) -> git.Reference | None:
        ref = f"refs/rejected/{_name(round_no, candidate)}"
        return git.Reference(self.repo, ref) if ref in {r.path for r in self.repo.refs} else None

    def diff(self, round_no: int, candidate: int | None = None) -> str:
        """The candidate's patch against its parent (the incumbent it was made from)."""
        commit = self._candidate(round_no, candidate)
        return self.repo.git.diff(commit.parents[0].hexsha, commit.hexsha, "--no-color", "--no-ext-diff")

    # -----------------------------------------------------------------------------------------
    # moving the work tree

    def checkout_main(self) -> None:
        """Clean work tree on main, whatever state a crash or a failed step left behind. Only
        uncommitted changes are dropped, and every change the harness makes is committed."""
        if self.repo.head.is_detached or self.repo.active_branch.name != MAIN:
            self.repo.git.checkout("--force", MAIN)
        if self.repo.is_dirty(untracked_files=True):
            self.repo.git.reset("--hard", MAIN)
            self.repo.git.clean("-fd")

    def checkout(self, round_no: int, candidate: int | None = None) -> None:
        """Put a round's candidate (candidate k of a round of several) in the work tree (detached)
        so the runner can evaluate it."""
        commit = self._candidate(round_no, candidate)
        self.checkout_main()
        self.repo.git.checkout("--detach", commit.hexsha)

    # -----------------------------------------------------------------------------------------
    # one round

    def apply(self, round_no: int, proposal: Proposal, candidate: int | None = None) -> str:
        """Validate `proposal` and commit it on cand/NNN (cand/NNN-k for `candidate` k) from main;
        return the commit sha. A rejection raises ProposalError with nothing written. Applying the
        same proposal to the same round again returns the existing commit; a different one is an error."""
        name, digest = _name(round_no, candidate), proposal_digest(proposal)
        existing = self.candidate_commit(round_no, candidate)
        if existing is not None:
            found = re.search(rf"^{_TRAILER}: (\w+)$", self.repo.commit(existing).message, re.MULTILINE)
            if found and found[1] == digest:
                return existing
            raise WorkspaceError(f"round {round_no}: cand/{name} already holds a different proposal")
        self.checkout_main()
        changed = render(proposal, self.path)  # every check happens here, before any write
        numbered = f"Round: {round_no}\n" + (f"Candidate: {candidate}\n" if candidate is not None else "")
        message = f"{proposal.hypothesis.strip()}\n\n{numbered}{_TRAILER}: {digest}\n"
        try:
            # Commit on a detached HEAD and name the branch last: the branch exists only once its
            # commit is complete, which is what makes the lookup above a safe resume check.
            self.repo.git.checkout("--detach", MAIN)
            for rel, text in changed.items():
                (self.path / rel).write_bytes(text.encode("utf-8"))
            commit = _commit(self.repo, message)
            self.repo.create_head(f"cand/{name}", commit)
        finally:
            self.checkout_main()
        return commit.hexsha

    def keep(self, round_no: int) -> None:
        """The candidate becomes the incumbent: main fast-forwards to it (a no-op if it already has)."""
        commit = self._candidate(round_no)
        if self._rejected(round_no) is not None:
            raise WorkspaceError(f"round {round_no} was reverted; it cannot be kept")
        main = self.repo.heads[MAIN].commit
        self.checkout_main()
        if self.repo.is_ancestor(commit, main):
            return
        if not self.repo.is_ancestor(main, commit):
            raise WorkspaceError(f"round {round_no}: main has moved since cand/{_name(round_no)} was made; "
                                 "keeping it would not be a fast-forward")
        self.repo.git.merge("--ff-only", commit.hexsha)

    def revert(self, round_no: int, reason: str, candidate: int | None = None) -> None:
        """Main stays; the candidate is pinned under refs/rejected/NNN (NNN-k) with `reason` as its note."""
        commit = self._candidate(round_no, candidate)
        self.checkout_main()
        if self.repo.is_ancestor(commit, self.repo.heads[MAIN].commit):
            raise WorkspaceError(f"round {round_no} was kept; it cannot be reverted")
        if self._rejected(round_no, candidate) is None:
            git.Reference.create(self.repo, f"refs/rejected/{_name(round_no, candidate)}", commit)
        self.repo.git.notes("--ref", NOTES_REF, "add", "--force", "--allow-empty", "-m", reason, commit.hexsha)

    def rejection_reason(self, round_no: int) -> str | None:
        """Why a round was reverted, or None when it was not."""
        ref = self._rejected(round_no)
        if ref is None:
            return None
        return self.repo.git.notes("--ref", NOTES_REF, "show", ref.commit.hexsha)

    # -----------------------------------------------------------------------------------------
    # a round of several candidates

    def choose(self, round_no: int, candidate: int) -> None:
        """Name candidate k the round's candidate (cand/NNN), which keep and revert then act on."""
        commit = self._candidate(round_no, candidate)
        chosen = self.candidate_commit(round_no)
        if chosen is None:
            self.repo.create_head(f"cand/{_name(round_no)}", commit)
        elif chosen != commit.hexsha:
            raise WorkspaceError(f"round {round_no}: cand/{_name(round_no)} already names another candidate")

    def snapshot(self, round_no: int, candidate: int, path: str | Path) -> contextlib.AbstractContextManager[Path]:
        """Candidate k's commit checked out at `path` (a detached worktree) for the `with` block;
        one left by a killed campaign is replaced."""
        return self.worktree(self._candidate(round_no, candidate).hexsha, path)

    @contextlib.contextmanager
    def worktree(self, commit: str, path: str | Path) -> Iterator[Path]:
        """`commit` checked out at `path` (a detached worktree) for the `with` block; one left by a
        killed campaign is replaced."""
        path = Path(path).resolve()
        self._drop_worktree(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.repo.git.worktree("add", "--detach", str(path), commit)
        try:
            yield path
        finally:
            self._drop_worktree(path)

    def _drop_worktree(self, path: Path) -> None:
        if path.exists():
            try:
                self.repo.git.worktree("remove", "--force", str(path))
            except git.GitCommandError:  # a folder git never finished registering
                shutil.rmtree(path)
        self.repo.git.worktree("prune")
