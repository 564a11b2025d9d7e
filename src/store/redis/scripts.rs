//! The Lua scripts. Each runs atomically on the node owning the patient's slot; every key it
//! touches is one of the patient's (same hash tag), so the scripts are valid on Redis Cluster.

use redis::Script;
use std::sync::LazyLock;

/// Applies one `PatientWrite`: all conditions, then all deletes, then all puts, the feed changes
/// and the call's audit event, or nothing.
///
/// KEYS: 1 = the patient's hash (pointers and reference entries); 2 = the patient's audit log (same
///       slot); on standalone Redis only (on a cluster they live in other slots and are not passed):
///       3 = the change feed stream, 4 = the audit export stream.
/// ARGV: n, then n × (kind, a, b) conditions: `A` id (absent), `V` id version8 (at version),
///       `R` field (reference free); then n, then n × (id, ref-field or "") deletes; then n, then
///       n × (id, value, ref-field or "") puts; then n, and when n > 0 the feed's MAXLEN (exact,
///       so a follower's cursor is out of range exactly when the retention says) and n encoded
///       changes to append to the feed; then the encoded audit event ("" for none) and the
///       export's approximate MAXLEN: all in the same atomic step.
/// Returns 1 when applied, 0 when a condition failed (nothing written, not even the event).
///
/// Each `redis.call` costs more than the command itself, so the script makes few: one HMGET for
/// every field that must be absent, one HSET for every put and its reference entry (pairs apply
/// in order, as separate HSETs would), and one XADD per change (each change has its own cursor).
pub static APPLY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local p = KEYS[1]
local i = 1
local function take()
  local v = ARGV[i]
  i = i + 1
  return v
end
local absent, versions = {}, {}
for _ = 1, tonumber(take()) do
  local kind, a, b = take(), take(), take()
  if kind == 'A' or kind == 'R' then
    absent[#absent + 1] = a
  elseif kind == 'V' then
    versions[#versions + 1] = {a, b}
  else
    return redis.error_reply('nrl: unknown condition ' .. tostring(kind))
  end
end
if #absent > 0 then
  local found = redis.call('HMGET', p, unpack(absent))
  for j = 1, #absent do
    if found[j] then return 0 end
  end
end
for _, v in ipairs(versions) do
  local stored = redis.call('HGET', p, v[1])
  if not stored or string.sub(stored, 1, 8) ~= v[2] then return 0 end
end
for _ = 1, tonumber(take()) do
  local id, ref = take(), take()
  redis.call('HDEL', p, id)
  if ref ~= '' and redis.call('HGET', p, ref) == id then redis.call('HDEL', p, ref) end
end
local puts = {}
for _ = 1, tonumber(take()) do
  local id, value, ref = take(), take(), take()
  puts[#puts + 1] = id
  puts[#puts + 1] = value
  if ref ~= '' then
    puts[#puts + 1] = ref
    puts[#puts + 1] = id
  end
end
if #puts > 0 then redis.call('HSET', p, unpack(puts)) end
local changes = tonumber(take())
if changes > 0 then
  local maxlen = take()
  for _ = 1, changes do
    redis.call('XADD', KEYS[3], 'MAXLEN', maxlen, '*', 'e', take())
  end
end
local event, export_maxlen = take(), take()
if event ~= '' then
  redis.call('RPUSH', KEYS[2], event)
  if KEYS[4] then redis.call('XADD', KEYS[4], 'MAXLEN', '~', export_maxlen, '*', 'e', event) end
end
return 1
"#,
    )
});

/// Reads the pointer a reference names, in one round trip.
///
/// KEYS: 1 = the patient's hash. ARGV: 1 = reference field.
/// Returns nil, or {id, value}.
pub static BY_REFERENCE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local id = redis.call('HGET', KEYS[1], ARGV[1])
if not id then return false end
local value = redis.call('HGET', KEYS[1], id)
if not value then return false end
return {id, value}
"#,
    )
});

/// Records audit events: each in its patient's log (a LIST, appended to) and, when the export
/// stream is passed, in the export too, all in one atomic step.
///
/// KEYS: 1..k = patients' logs; k+1 = the export stream, when passed (standalone Redis: always;
///       on a cluster the export is in another slot, so it is recorded by its own invocation).
/// ARGV: 1 = k; 2 = the export's approximate MAXLEN; then n × (log index 1..k, or 0 for "export
///       only", encoded event).
pub static RECORD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local k = tonumber(ARGV[1])
local export = KEYS[k + 1]
for i = 3, #ARGV, 2 do
  local log = tonumber(ARGV[i])
  if log > 0 then redis.call('RPUSH', KEYS[log], ARGV[i + 1]) end
  if export then redis.call('XADD', export, 'MAXLEN', '~', ARGV[2], '*', 'e', ARGV[i + 1]) end
end
return 1
"#,
    )
});

/// A page of a patient's log, newest last: the events at positions [max(0, before - limit), before).
///
/// KEYS: 1 = the patient's log. ARGV: 1 = before (a position, or -1 for "after the newest");
///       2 = limit. Returns {first position returned, events oldest first}.
pub static LOG_PAGE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local n = redis.call('LLEN', KEYS[1])
local before = tonumber(ARGV[1])
if before < 0 or before > n then before = n end
local from = before - tonumber(ARGV[2])
if from < 0 then from = 0 end
if before == 0 then return {0, {}} end
return {from, redis.call('LRANGE', KEYS[1], from, before - 1)}
"#,
    )
});

/// Sets or lifts a patient's restriction, and appends the change to the feed when one is passed.
///
/// KEYS: 1 = the patient's hash; 2 = the change feed (standalone Redis only).
/// ARGV: 1 = "1" to restrict, "0" to lift; with a feed, 2 = its MAXLEN, 3 = the encoded change.
pub static RESTRICT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if ARGV[1] == '1' then
  redis.call('HSET', KEYS[1], 'x|restricted', '1')
else
  redis.call('HDEL', KEYS[1], 'x|restricted')
end
if KEYS[2] then redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[2], '*', 'e', ARGV[3]) end
return 1
"#,
    )
});
