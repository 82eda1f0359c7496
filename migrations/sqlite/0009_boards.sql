-- Boards: dashboards composed of panels across pipelines. `spec` is the board's JSON (title,
-- range, panels) as dash-boards checks it; panels name pipelines and views, which may come and
-- go (a panel whose pipeline is gone says so). Times are unix ms.
CREATE TABLE boards (
    name       TEXT   PRIMARY KEY,
    spec       TEXT   NOT NULL,
    -- Rises with every change: an edit made from a board as read applies only if nobody changed
    -- it meanwhile (else it is made again on the board as it now is).
    version    BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- A board's read-only share links: the link carries a random token, of which only the SHA-256
-- is kept. Revoking a link deletes its row; deleting the board deletes its links.
CREATE TABLE board_shares (
    id         TEXT   PRIMARY KEY,
    board      TEXT   NOT NULL REFERENCES boards (name) ON DELETE CASCADE,
    token_hash TEXT   NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX board_shares_board ON board_shares (board);
