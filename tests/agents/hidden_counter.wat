;; hidden_counter: keeps its state in a mutable global it does not export, as AssemblyScript
;; modules do. A host snapshot (memory plus exported globals) cannot save $count, so after a
;; worker crash this agent cannot be restored; its on_error policy must apply.
;;
;; Payload: one little-endian i64 n. It adds one to $count and, while n > 0, sends itself
;; (n - 1, count) so that the trace shows the count.
(module
  (import "qhybrid" "send" (func $send (param i32 i32 i32 i32) (result i32)))
  (import "qhybrid" "self_id" (func $self_id (result i32)))
  (memory (export "memory") 1)
  (global $count (mut i64) (i64.const 0))
  (func (export "qh_abi_version") (result i32) (i32.const 1))
  (func (export "qh_alloc") (param $size i32) (result i32) (i32.const 1024))
  (func (export "qh_on_message")
    (param $from i32) (param $kind i32) (param $ptr i32) (param $len i32) (result i32)
    (local $n i64)
    (if (i32.lt_u (local.get $len) (i32.const 8)) (then (return (i32.const 1))))
    (local.set $n (i64.load (local.get $ptr)))
    (global.set $count (i64.add (global.get $count) (i64.const 1)))
    (if (i64.gt_s (local.get $n) (i64.const 0))
      (then
        (i64.store (i32.const 512) (i64.sub (local.get $n) (i64.const 1)))
        (i64.store (i32.const 520) (global.get $count))
        (return (i32.ne (call $send (call $self_id) (local.get $kind) (i32.const 512) (i32.const 16))
                        (i32.const 0)))))
    (i32.const 0))
)
