;; ping: the smallest useful agent, for `qhybrid bench dispatch`. It counts down by messaging
;; itself, so every delivery costs the runtime one full dispatch while the agent does almost
;; nothing: what a benchmark of it measures is the runtime's own overhead per message.
;;
;; Payload: one little-endian i64 n. If n > 0 it sends n - 1 to itself (self_id) with the same
;; kind. It returns 0 (handled), or 1 when the payload is shorter than 8 bytes or the send is
;; refused.
(module
  (import "qhybrid" "send" (func $send (param i32 i32 i32 i32) (result i32)))
  (import "qhybrid" "self_id" (func $self_id (result i32)))

  (memory (export "memory") 1)

  (func (export "qh_abi_version") (result i32) (i32.const 1))

  ;; One scratch buffer at 1024 for every incoming payload; grow memory when it is too small.
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
    (local $n i64)
    (if (i32.lt_u (local.get $len) (i32.const 8)) (then (return (i32.const 1))))
    (local.set $n (i64.load (local.get $ptr)))
    (if (i64.gt_s (local.get $n) (i64.const 0))
      (then
        (i64.store (i32.const 512) (i64.sub (local.get $n) (i64.const 1)))
        (return (i32.ne (call $send (call $self_id) (local.get $kind) (i32.const 512) (i32.const 8))
                        (i32.const 0)))))
    (i32.const 0))
)
