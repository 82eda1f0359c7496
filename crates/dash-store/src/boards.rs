//! Boards as stored: a name and the board's JSON (`dash_boards::BoardSpec`), read back through the
//! same check every way in uses. Both backends share the SQL text.

use dash_boards::{BoardSpec, InvalidBoard, Panel, PanelKind};
use dash_domain::{format_ms, now_ms};
use serde::Serialize;

use crate::{PutMode, Store, StoreError};

/// A board as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BoardRecord {
    pub name: String,
    #[serde(flatten)]
    pub spec: BoardSpec,
    /// Rises with every change (see [`Store::replace_board_at`]).
    pub version: i64,
    pub created_at: String,
    pub updated_at: String,
}

const COLUMNS: &str = "name, spec, version, created_at, updated_at";

const INSERT: &str = "INSERT INTO boards (name, spec, created_at, updated_at) VALUES ($1, $2, $3, $3) \
     ON CONFLICT (name) DO NOTHING";
const UPDATE: &str = "UPDATE boards SET spec = $2, updated_at = $3, version = version + 1 WHERE name = $1";
/// Changes the board only if it is still at the version the change was made from.
const UPDATE_AT: &str =
    "UPDATE boards SET spec = $2, updated_at = $3, version = version + 1 WHERE name = $1 AND version = $4";
/// Makes or changes; a board that already holds this spec is left as it is (its `updated_at`
/// too), so a node applying the configuration at every start writes nothing.
const UPSERT: &str = "INSERT INTO boards (name, spec, created_at, updated_at) VALUES ($1, $2, $3, $3) \
     ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, updated_at = excluded.updated_at, \
     version = boards.version + 1 WHERE boards.spec <> excluded.spec";
const DELETE: &str = "DELETE FROM boards WHERE name = $1";

/// A row as read: name, spec, version, created, updated.
type Row = (String, String, i64, i64, i64);

fn from_row((name, text, version, created_at, updated_at): Row) -> Result<BoardRecord, StoreError> {
    let spec = serde_json::from_str(&text)
        .map_err(|e| e.to_string())
        .and_then(|value| BoardSpec::from_json(value).map_err(|e| e.to_string()))
        .map_err(|e| StoreError::UnreadableBoard(format!("{name}: {e}")))?;
    Ok(BoardRecord { name, spec, version, created_at: format_ms(created_at), updated_at: format_ms(updated_at) })
}

impl Store {
    /// Makes (`Create`: a board of that name is [`StoreError::Conflict`]), changes (`Replace`:
    /// none is [`StoreError::NotFound`]) or either (`Upsert`). `Ok(false)`: an upsert found the
    /// board already as asked.
    pub async fn put_board(&self, name: &str, spec: &BoardSpec, mode: PutMode) -> Result<bool, StoreError> {
        dash_boards::check_board_name(name).map_err(|e| StoreError::InvalidBoard(e.to_string()))?;
        let text = serde_json::to_string(spec).expect("a board serializes");
        let sql = match mode {
            PutMode::Create => INSERT,
            PutMode::Replace => UPDATE,
            PutMode::Upsert => UPSERT,
        };
        let changed = on_backend!(self, writer, |pool| {
            sqlx::query(sql).bind(name).bind(&text).bind(now_ms()).execute(pool).await?.rows_affected()
        });
        match (mode, changed) {
            (PutMode::Create, 0) => Err(StoreError::Conflict(name.to_owned())),
            (PutMode::Replace, 0) => Err(StoreError::NotFound(name.to_owned())),
            (_, changed) => Ok(changed > 0),
        }
    }

    /// Replaces `name`'s spec if the board is still at `version` (the one the change was made
    /// from): `Ok(false)` when someone changed it meanwhile (read it again and redo the change),
    /// [`StoreError::NotFound`] when it is gone.
    pub async fn replace_board_at(&self, name: &str, spec: &BoardSpec, version: i64) -> Result<bool, StoreError> {
        let text = serde_json::to_string(spec).expect("a board serializes");
        let changed = on_backend!(self, writer, |pool| sqlx::query(UPDATE_AT)
            .bind(name)
            .bind(&text)
            .bind(now_ms())
            .bind(version)
            .execute(pool)
            .await?
            .rows_affected());
        if changed > 0 {
            return Ok(true);
        }
        match self.find_board(name).await? {
            Some(_) => Ok(false),
            None => Err(StoreError::NotFound(name.to_owned())),
        }
    }

    /// Checks that every pipeline and view the panels name exists
    /// ([`StoreError::BoardReference`] names the panel's field otherwise), and names each pipeline
    /// by its id (a panel keeps its pipeline through a rename). Panels in `kept` (the board as it
    /// was) are not checked again: a pipeline deleted since leaves its panel saying so, without
    /// refusing every other change to the board.
    pub async fn resolve_board(&self, mut spec: BoardSpec, kept: &[Panel]) -> Result<BoardSpec, StoreError> {
        for (i, panel) in spec.panels.iter_mut().enumerate() {
            if kept.contains(panel) {
                continue;
            }
            let (pipeline, view) = match &mut panel.kind {
                PanelKind::Pipeline { pipeline } => (pipeline, None),
                PanelKind::View { pipeline, view, .. } => (pipeline, Some(view.as_str())),
                PanelKind::Note { .. } => continue,
            };
            let Some(found) = self.find_pipeline(pipeline).await? else {
                return Err(StoreError::BoardReference(InvalidBoard {
                    field: format!("panels[{i}].pipeline"),
                    message: format!("no pipeline {pipeline:?}"),
                }));
            };
            if let Some(view) = view
                && self.find_view(&found.id, view).await?.is_none()
            {
                return Err(StoreError::BoardReference(InvalidBoard {
                    field: format!("panels[{i}].view"),
                    message: format!("pipeline {:?} has no view {view:?}", found.id),
                }));
            }
            *pipeline = found.id;
        }
        Ok(spec)
    }

    pub async fn find_board(&self, name: &str) -> Result<Option<BoardRecord>, StoreError> {
        if dash_boards::check_board_name(name).is_err() {
            return Ok(None);
        }
        let sql = format!("SELECT {COLUMNS} FROM boards WHERE name = $1");
        let found = on_backend!(self, readers, |pool| {
            sqlx::query_as::<_, Row>(sqlx::AssertSqlSafe(sql)).bind(name).fetch_optional(pool).await?
        });
        found.map(from_row).transpose()
    }

    /// Every board, by name. One that no longer reads (written by a later release) is left out
    /// with a warning rather than hiding the others.
    pub async fn list_boards(&self) -> Result<Vec<BoardRecord>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM boards ORDER BY name");
        let rows = on_backend!(self, readers, |pool| {
            sqlx::query_as::<_, Row>(sqlx::AssertSqlSafe(sql)).fetch_all(pool).await?
        });
        let mut boards = Vec::with_capacity(rows.len());
        for row in rows {
            match from_row(row) {
                Ok(board) => boards.push(board),
                Err(err) => tracing::warn!(error = %err, "a stored board is unreadable"),
            }
        }
        Ok(boards)
    }

    /// `false` when there was no such board.
    pub async fn delete_board(&self, name: &str) -> Result<bool, StoreError> {
        if dash_boards::check_board_name(name).is_err() {
            return Ok(false);
        }
        let deleted =
            on_backend!(self, writer, |pool| sqlx::query(DELETE).bind(name).execute(pool).await?.rows_affected());
        Ok(deleted > 0)
    }
}

/// A board's share link as listed (its token is shown once, when it is made, and never kept).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShareRecord {
    pub id: String,
    pub board: String,
    pub created_at: String,
    pub expires_at: String,
    /// Unix ms of `expires_at`.
    #[serde(skip)]
    pub expires_ms: i64,
}

type ShareRow = (String, String, i64, i64);

fn share_from_row((id, board, created_at, expires_at): ShareRow) -> ShareRecord {
    ShareRecord {
        id,
        board,
        created_at: format_ms(created_at),
        expires_at: format_ms(expires_at),
        expires_ms: expires_at,
    }
}

/// Most share links one board may have at once.
pub const MAX_SHARES_PER_BOARD: i64 = 100;

impl Store {
    /// Keeps a new share link of `board` (by its token's hash) until `expires_ms`.
    /// [`StoreError::NotFound`] when there is no such board; [`StoreError::InvalidBoard`] past
    /// [`MAX_SHARES_PER_BOARD`].
    pub async fn create_share(
        &self,
        board: &str,
        token_hash: &str,
        expires_ms: i64,
    ) -> Result<ShareRecord, StoreError> {
        if self.find_board(board).await?.is_none() {
            return Err(StoreError::NotFound(board.to_owned()));
        }
        let id = uuid::Uuid::now_v7().simple().to_string();
        let now = now_ms();
        let count: i64 =
            on_backend!(self, readers, |pool| sqlx::query_scalar("SELECT COUNT(*) FROM board_shares WHERE board = $1")
                .bind(board)
                .fetch_one(pool)
                .await?);
        if count >= MAX_SHARES_PER_BOARD {
            return Err(StoreError::InvalidBoard(format!(
                "a board has at most {MAX_SHARES_PER_BOARD} share links; revoke some first"
            )));
        }
        let result = on_backend!(self, writer, |pool| sqlx::query(
            "INSERT INTO board_shares (id, board, token_hash, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)"
        )
        .bind(&id)
        .bind(board)
        .bind(token_hash)
        .bind(now)
        .bind(expires_ms)
        .execute(pool)
        .await
        .map(|_| ()));
        match result {
            Ok(_) => Ok(share_from_row((id, board.to_owned(), now, expires_ms))),
            // The board was deleted meanwhile.
            Err(sqlx::Error::Database(db)) if db.is_foreign_key_violation() => {
                Err(StoreError::NotFound(board.to_owned()))
            }
            Err(err) => Err(err.into()),
        }
    }

    /// A board's share links, newest first, expired ones included (the board's editor shows
    /// them as expired).
    pub async fn list_shares(&self, board: &str) -> Result<Vec<ShareRecord>, StoreError> {
        let rows = on_backend!(self, readers, |pool| {
            sqlx::query_as::<_, ShareRow>(
            "SELECT id, board, created_at, expires_at FROM board_shares WHERE board = $1 ORDER BY created_at DESC, id DESC"
        )
        .bind(board)
        .fetch_all(pool)
        .await?
        });
        Ok(rows.into_iter().map(share_from_row).collect())
    }

    /// The share link whose token hashes to `token_hash`, expired or not.
    pub async fn find_share(&self, token_hash: &str) -> Result<Option<ShareRecord>, StoreError> {
        let row = on_backend!(self, readers, |pool| sqlx::query_as::<_, ShareRow>(
            "SELECT id, board, created_at, expires_at FROM board_shares WHERE token_hash = $1"
        )
        .bind(token_hash)
        .fetch_optional(pool)
        .await?);
        Ok(row.map(share_from_row))
    }

    /// Revokes a share link; `false` when the board had no such link.
    pub async fn delete_share(&self, board: &str, id: &str) -> Result<bool, StoreError> {
        let deleted =
            on_backend!(self, writer, |pool| sqlx::query("DELETE FROM board_shares WHERE board = $1 AND id = $2")
                .bind(board)
                .bind(id)
                .execute(pool)
                .await?
                .rows_affected());
        Ok(deleted > 0)
    }
}
