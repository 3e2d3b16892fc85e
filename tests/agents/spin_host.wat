;; spin_host (test-only, hostile): loops forever calling a cheap host function (now), so that
;; most of its time is in the host, where fuel is not spent: the default time limit stops it.
(module
  (import "qhybrid" "now" (func $now (result i64)))
  (memory (export "memory") 1)
  (func (export "qh_abi_version") (result i32) (i32.const 1))
  (func (export "qh_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "qh_on_message") (param i32 i32 i32 i32) (result i32)
    (loop $l (drop (call $now)) (br $l))
    (i32.const 0))
)
