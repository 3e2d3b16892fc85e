;; escapes (test-only, hostile): on every message it logs, through qhybrid's log and through
;; WASI stdout, text that would take over a terminal printed raw: clear the screen, set the
;; window title, return the cursor and overwrite the line, and forge a "completed" line.
(module
  (import "qhybrid" "log" (func $log (param i32 i32 i32)))
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  ;; 1024: the text (68 bytes); 2048: an iovec for fd_write
  (data (i32.const 1024)
    "\1b[2J\1b]0;pwned\07\rcompleted: all agents finished\nhi\e2\80\aeevil\1b[31mred\08\00end")
  (func (export "qh_abi_version") (result i32) (i32.const 1))
  (func (export "qh_alloc") (param i32) (result i32) (i32.const 4096))
  (func (export "qh_on_message") (param i32 i32 i32 i32) (result i32)
    (call $log (i32.const 30) (i32.const 1024) (i32.const 68))
    (i32.store (i32.const 2048) (i32.const 1024))
    (i32.store (i32.const 2052) (i32.const 68))
    (drop (call $fd_write (i32.const 1) (i32.const 2048) (i32.const 1) (i32.const 2060)))
    (i32.const 0))
)
