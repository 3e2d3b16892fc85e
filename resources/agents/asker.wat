;; asker: asks a person a question (ABI v2 `ask`, no compiler). On a message of kind 1 from
;; the runtime it asks "Which colour?" (tag 7); the answer (kind ANSWER, JSON
;; {"question", "tag", "text", "answer"}) it logs as "asker: got <payload>". In the window the
;; question appears in the Questions panel and the run waits for it; headless, `--answers`.
(module
  (import "qhybrid" "log" (func $log (param i32 i32 i32)))
  (import "qhybrid" "ask" (func $ask (param i32 i32 i32) (result i32)))

  (memory (export "memory") 1)
  (data (i32.const 256) "Which colour?")
  (data (i32.const 272) "asker: got ")

  (func (export "qh_abi_version") (result i32) (i32.const 2))

  ;; Payloads go at 1024; the log line is built at 512 (prefix, then at most 480 bytes).
  (func (export "qh_alloc") (param $size i32) (result i32)
    (local $need i32) (local $have i32)
    (local.set $need (i32.add (i32.const 1024) (local.get $size)))
    (local.set $have (i32.mul (memory.size) (i32.const 65536)))
    (if (i32.gt_u (local.get $need) (local.get $have))
      (then
        (drop (memory.grow
          (i32.add (i32.shr_u (i32.sub (local.get $need) (local.get $have)) (i32.const 16))
                   (i32.const 1))))))
    (i32.const 1024))

  (func (export "qh_on_message")
    (param $from i32) (param $kind i32) (param $ptr i32) (param $len i32) (result i32)
    (local $n i32)
    (if (i32.and (i32.eq (local.get $kind) (i32.const 1))
                 (i32.eq (local.get $from) (i32.const -1)))
      (then
        (return (i32.lt_s (call $ask (i32.const 256) (i32.const 13) (i32.const 7))
                          (i32.const 0)))))
    (if (i32.eq (local.get $kind) (i32.const 0x7f000006))
      (then
        (local.set $n (select (local.get $len) (i32.const 480)
                              (i32.lt_u (local.get $len) (i32.const 480))))
        (memory.copy (i32.const 512) (i32.const 272) (i32.const 11))
        (memory.copy (i32.const 523) (local.get $ptr) (local.get $n))
        (call $log (i32.const 20) (i32.const 512) (i32.add (local.get $n) (i32.const 11)))))
    (i32.const 0))
)
